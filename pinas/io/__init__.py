"""Everything pinas puts on disk: atomic artifacts and manifests, folder locks, and one reader/writer per stage
folder format (:mod:`pinas.io.stage_dirs`), the only way one stage reads another's outputs."""
