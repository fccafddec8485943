"""Ember: a self-hosted serverless GPU platform, wire-compatible with RunPod Serverless."""

__version__ = "0.1.0"
