"""pinas: Pi-NAS from search to deployment."""
__version__ = "0.2.0"
