"""Reading runs back: compare, the report, plots and the claims. Never imports the runner or Hydra."""
