"""Every setting the gateway reads, from the environment or `.env`.

One object, validated once at start, so a bad value is one clear error instead of a
traceback deep inside a request. Every outside endpoint is a setting whose default is
the real service, which is what lets the running process be pointed at the local fakes.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def _split_pairs(value: object) -> object:
    """`asana=ac_1,gmail=ac_2` -> {"asana": "ac_1", "gmail": "ac_2"}."""
    if isinstance(value, str):
        pairs: dict[str, str] = {}
        for item in value.split(","):
            if not item.strip():
                continue
            key, sep, val = item.partition("=")
            if not sep or not key.strip() or not val.strip():
                raise ValueError(f"expected NAME=VALUE pairs separated by commas, got {item!r}")
            pairs[key.strip().lower()] = val.strip()
        return pairs
    return value


CsvList = Annotated[list[str], NoDecode]
PairMap = Annotated[dict[str, str], NoDecode]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    # --- storage ---------------------------------------------------------------
    database_url: str = Field(
        "sqlite+aiosqlite:///./data/gateway.db",
        description="SQLAlchemy async URL: sqlite+aiosqlite:///path or postgresql+asyncpg://...",
    )

    # --- LLM -------------------------------------------------------------------
    llm_model: str = Field(
        "", description="litellm model name, e.g. openai/gpt-4o-mini. Empty: not configured."
    )
    llm_api_base: str = Field(
        "", description="OpenAI-compatible base URL; empty uses the provider's default."
    )
    llm_api_key: SecretStr = Field(SecretStr(""), description="API key for the LLM provider.")
    llm_timeout_seconds: float = Field(60.0, gt=0, description="Timeout of one LLM call.")
    llm_retries: int = Field(
        1, ge=0, le=10, description="Retries of a failed LLM call before apologising."
    )
    llm_max_steps: int = Field(
        6, ge=1, le=50, description="Tool-loop steps per turn before giving up."
    )
    llm_vision: bool = Field(True, description="Send images to the model as image content.")
    transcription_model: str = Field(
        "", description="litellm transcription model for voice notes; empty: voice not supported."
    )
    system_prompt: str = Field(
        "You are a helpful assistant. You can use tools on the user's behalf when they have "
        "connected them. Answer concisely.",
        description="System prompt of every turn.",
    )
    media_max_bytes: int = Field(
        20 * 1024 * 1024, gt=0, description="Largest attachment a turn downloads."
    )
    history_messages: int = Field(
        20, ge=0, le=500, description="Conversation messages given to the model."
    )

    # --- Composio ----------------------------------------------------------------
    composio_api_key: SecretStr = Field(
        SecretStr(""), description="Composio API key; empty: tools disabled."
    )
    composio_base_url: str = Field(
        "https://backend.composio.dev", description="Composio API base URL."
    )
    composio_toolkits: CsvList = Field(
        default_factory=list, description="Enabled toolkits, comma separated (e.g. gmail,asana)."
    )
    composio_auth_configs: PairMap = Field(
        default_factory=dict, description="Auth config id per toolkit: asana=ac_...,gmail=ac_..."
    )
    composio_toolkit_versions: PairMap = Field(
        default_factory=dict, description="Pinned toolkit versions: asana=20250909_00,..."
    )
    composio_telemetry: bool = Field(
        False, description="Allow Composio's usage telemetry (off by default)."
    )

    # --- pool ------------------------------------------------------------------------
    pool_concurrency: int = Field(
        16, ge=1, le=10_000, description="Turns running at once in this process."
    )
    lease_seconds: float = Field(
        60.0, gt=1, description="How long a claimed message stays claimed without a heartbeat."
    )
    poll_interval_seconds: float = Field(
        1.0, gt=0, description="How often to look for work queued by other processes."
    )
    max_attempts: int = Field(
        5, ge=1, le=100, description="Tries of a failing send before it is dead-lettered."
    )
    outbox_max_age_seconds: float = Field(
        24 * 3600, gt=0, description="Replies not delivered within this age are dead-lettered."
    )
    shutdown_timeout_seconds: float = Field(
        20.0, ge=0, description="Grace time for in-flight turns on shutdown."
    )
    group_reply_policy: Literal["mention", "always", "never"] = Field(
        "mention",
        description="In groups answer when mentioned/replied to (mention), always, or never.",
    )

    # --- HTTP ------------------------------------------------------------------------
    public_base_url: str = Field(
        "", description="Public URL of this gateway, used to print webhook URLs."
    )
    readyz_requires_llm: bool = Field(
        False,
        description="/readyz answers 503 while the LLM provider is unreachable (by default it "
        "only reports it: messages are still stored and answered once it is back).",
    )
    webhook_max_in_flight: int = Field(
        256,
        ge=0,
        description="Webhook requests handled at once; beyond it a fast 503 asks the platform "
        "to retry later instead of a late 200 (0: no limit).",
    )
    log_level: str = Field("info", description="debug, info, warning or error.")
    log_format: Literal["text", "json"] = Field(
        "text", description="text or json (one object per line)."
    )
    log_unmasked: bool = Field(
        False, description="With log_level=debug, log phone numbers and text unmasked."
    )

    # --- WhatsApp (Cloud API) ------------------------------------------------------
    whatsapp_phone_number_id: str = Field(
        "", description="Phone number id of the WhatsApp business number."
    )
    whatsapp_token: SecretStr = Field(SecretStr(""), description="Graph API access token.")
    whatsapp_app_secret: SecretStr = Field(
        SecretStr(""), description="Meta app secret (webhook signatures)."
    )
    whatsapp_verify_token: SecretStr = Field(
        SecretStr(""), description="Webhook subscription verify token."
    )
    whatsapp_graph_url: str = Field("https://graph.facebook.com", description="Graph API base URL.")
    whatsapp_graph_version: str = Field("v26.0", description="Graph API version.")
    whatsapp_media_max_bytes: int = Field(
        16 * 1024 * 1024, gt=0, description="Largest WhatsApp media downloaded."
    )

    # --- Telegram ------------------------------------------------------------------
    telegram_bot_token: SecretStr = Field(SecretStr(""), description="Bot token from @BotFather.")
    telegram_webhook_secret: SecretStr = Field(
        SecretStr(""), description="X-Telegram-Bot-Api-Secret-Token value."
    )
    telegram_mode: Literal["webhook", "polling"] = Field(
        "webhook", description="webhook or polling."
    )
    telegram_api_url: str = Field("https://api.telegram.org", description="Bot API base URL.")

    # --- Slack ---------------------------------------------------------------------
    slack_bot_token: SecretStr = Field(SecretStr(""), description="Bot token (xoxb-...).")
    slack_signing_secret: SecretStr = Field(
        SecretStr(""), description="Signing secret (Events API)."
    )
    slack_app_token: SecretStr = Field(
        SecretStr(""), description="App-level token (xapp-...) for Socket Mode."
    )
    slack_mode: Literal["http", "socket"] = Field(
        "http", description="http (Events API) or socket."
    )
    slack_api_url: str = Field("https://slack.com/api/", description="Slack Web API base URL.")

    # --- console --------------------------------------------------------------------
    console_token: SecretStr = Field(
        SecretStr(""), description="Bearer token opening POST /webhooks/console; empty: closed."
    )

    # --- admin ---------------------------------------------------------------------
    admin_token: SecretStr = Field(
        SecretStr(""), description="Bearer token of the admin API; empty: admin disabled."
    )

    _split_lists = field_validator("composio_toolkits", mode="before")(_split_csv)
    _split_maps = field_validator(
        "composio_auth_configs", "composio_toolkit_versions", mode="before"
    )(_split_pairs)

    @field_validator("composio_toolkits", mode="after")
    @classmethod
    def _lower_toolkits(cls, value: list[str]) -> list[str]:
        return [item.lower() for item in value]

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        if not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError(
                "must start with sqlite+aiosqlite:// or postgresql+asyncpg:// (an async driver)"
            )
        return value

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        value = value.lower()
        if value not in {"debug", "info", "warning", "error"}:
            raise ValueError("must be one of debug, info, warning, error")
        return value

    @property
    def llm_configured(self) -> bool:
        return bool(self.llm_model)

    @property
    def composio_configured(self) -> bool:
        return bool(self.composio_api_key.get_secret_value())

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


class ConfigError(Exception):
    """Raised with one readable message listing every invalid setting."""


def load_settings(**overrides: object) -> Settings:
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            name = ".".join(str(part) for part in error["loc"]).upper()
            lines.append(f"  {name}: {error['msg']}")
        raise ConfigError("Invalid configuration:\n" + "\n".join(lines)) from None
