"""Trainer adapters: turn a PairedBatch into a trainer's inputs."""
