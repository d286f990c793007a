"""Migration phases: each can describe (plan), check (already done?), do (apply) and undo."""
