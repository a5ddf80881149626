"""VLM families, one file each, found by name (engine.models.vlm.auto); the MyVLM concept layer."""
