"""The pipeline's stages, one file each, reading like torchvision's reference scripts: the stage's config, its
``run_<stage>`` (validate inputs, train or compute through the engine, write the stage folder), ``run`` (the same
called the one way every stage is, from the stage table :mod:`pinas.stages.graph`) and, for a distributed stage,
``train_rank`` (one process, started by torchrun through :mod:`pinas.stages.rank`). A stage reads another stage's
outputs only through :mod:`pinas.io.stage_dirs`."""
