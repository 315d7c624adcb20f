"""Where the bridge keeps its own durable state: SQLite files (default) or PostgreSQL (`store.url`)."""
