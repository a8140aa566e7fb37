"""ClickHouse schema: numbered up-migrations (``migrations/NNNN_name.sql``), never edited
after they land; :mod:`archwatch.migrate` applies them in order and checks their hashes."""
