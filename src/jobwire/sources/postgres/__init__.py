"""A PostgreSQL table as an event source (seed 001): `spec` (trigger and settings, pure pydantic),
`sql` (identifier quoting and the statements, no client library), `source` and `sink` (asyncpg,
the `postgres` pip extra) and `install` (`jobwire db install-trigger`)."""
