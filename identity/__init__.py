"""Unified users: who is behind a channel identity, and the Composio entity that is theirs."""
