"""The results database: SQLAlchemy models, engines per process, migrations and queries."""
