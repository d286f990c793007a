"""PostgreSQL on a target: runtimes (docker / native), snapshots, role passwords."""
