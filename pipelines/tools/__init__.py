"""Commands over finished outputs (verify, inspect), the preview sheet and the demo."""
