"""The pipeline: a runner and thin stages that call the domain and the models for each photo."""
