"""Amazon S3 as an event source (seed 000): objects landing in a bucket, announced through an SQS
queue. `spec` (trigger and settings, pure pydantic) and `source` (aiobotocore, the `aws` pip
extra; the receive loop is the `sqs` kind's)."""
