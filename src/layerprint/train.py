"""``python -m layerprint.train``: the same command as ``layerprint-train`` (the runner is ``layerprint.runner``)."""

from layerprint.runner.train import main

if __name__ == "__main__":
    main()
