"""The domain: people, concepts, captions, search and personalisation (MyVLM)."""
