"""The composition root: settings, the HTTP app, inbox/outbox, CLI."""
