"""Amazon SQS as an event source: `spec` (trigger and settings, pure pydantic) and `source`
(aiobotocore, the `aws` pip extra). The receive loop in `source` is shared with the `s3` kind,
which reads S3 event notifications from an SQS queue."""
