"""Several bridges sharing the accounts through PostgreSQL (store.url): leases, placement, routing."""
