"""VM images on an agent: the catalog of image directories and the builder of the tiny guest."""

from agent.images.catalog import DEFAULT_IMAGES_DIR, ImageCatalog, ImageManifest, parse_manifest

__all__ = ["DEFAULT_IMAGES_DIR", "ImageCatalog", "ImageManifest", "parse_manifest"]
