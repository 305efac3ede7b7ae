"""Event sources: one module per kind (time triggers live in the engine's scheduler; api and webhook
come through the REST API). Broker sources (amqp, sqs, s3, mqtt, postgres) plug in here."""

from jobwire.sources.base import Source, Submit

__all__ = ["Source", "Submit"]
