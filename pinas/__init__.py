"""pinas: Pi-NAS from search to deployment."""
__version__ = "0.1.0"
