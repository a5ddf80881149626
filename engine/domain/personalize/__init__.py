"""Personalisation (MyVLM): concept embeddings trained on a frozen VLM, personalised captions and answers, instant
names before training, and the research format. The VLM families themselves are in engine.models.vlm."""
