"""RabbitMQ (AMQP 0-9-1) as an event source: `spec` (trigger and settings, pure pydantic) and
`source` (aio-pika, the `amqp` pip extra)."""
