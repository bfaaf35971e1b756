"""Profile (TOML) to a validated Plan: the first stage of the data flow."""
