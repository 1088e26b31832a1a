"""The pipeline's stages, one file each, reading like torchvision's reference scripts: the stage's config, its
``run_<stage>`` (validate inputs, train or compute through the engine, write the stage folder) and a ``main`` for
the command line / torchrun. A stage reads another stage's outputs only through :mod:`pinas.io.stage_dirs`."""
