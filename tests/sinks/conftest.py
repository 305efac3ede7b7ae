from tests.support.aws import aws_env, moto  # noqa: F401  (fixtures: moto's server over HTTP, AWS_* set)
