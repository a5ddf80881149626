"""Models: CLIP, face backends and VLM families (one file each), hardware, downloads."""
