"""Local fake servers speaking the real platforms' HTTP APIs, on 127.0.0.1 ephemeral ports."""
