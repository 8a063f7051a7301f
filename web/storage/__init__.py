"""The database: its engine and connections, the schema, and the migrations."""
