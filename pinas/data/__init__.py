"""Data: ImageNet-format folders and the loader (:mod:`~pinas.data.images`), on-device views and augmentation
(:mod:`~pinas.data.transforms`), the demo data generator (:mod:`~pinas.data.demo`) and where a run's datasets come
from, checked and fingerprinted (:mod:`~pinas.data.sources`)."""
