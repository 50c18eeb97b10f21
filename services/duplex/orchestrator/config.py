"""Settings of the orchestrator."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from duplex.orchestrator.asr import AsrConfig
from duplex.orchestrator.livekit_tokens import LiveKitConfig
from duplex.orchestrator.responder import ResponderConfig
from duplex.rpc.security import ClientTls


class TurnConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # After a finished sentence or question. The pause after a comma runs 0.2-0.3 s, and
    # Whisper may end what came before it with a full stop: much shorter takes the floor
    # from the user mid-sentence.
    min_silence: float = Field(0.3, ge=0)
    default_silence: float = Field(0.7, ge=0)
    incomplete_silence: float = Field(2.2, ge=0)
    max_turn_seconds: float = Field(30.0, gt=0)


class BargeInConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Interrupting speech shorter than this, or without words, is a cough: resume.
    min_speech_seconds: float = Field(0.3, ge=0)
    # Speech this long confirms the interruption without waiting for it to end.
    confirm_after_seconds: float = Field(1.0, gt=0)
    # Speech over the reply first lowers its volume to this share, at once...
    duck_gain: float = Field(0.25, ge=0, le=1)
    # ... and silences it once the speech has lasted this long (from the onset the VAD found):
    # longer lets more "uh-huh"s through unsilenced, shorter stops sooner for "wait".
    pause_after_seconds: float = Field(0.15, ge=0)
    # ... and, silenced, has its first words transcribed once they have lasted this long: a
    # backchannel ("uh-huh", "yeah") lets the reply go on, lowered, before the user finishes it.
    glimpse_after_seconds: float = Field(0.25, ge=0)
    # Speech over the reply this much quieter than the user's own (a television, people
    # across the room) does not interrupt it. The user's level is learnt from their turns.
    background_db: float = Field(15.0, gt=0)


class KubeSettings(BaseModel):
    """Kubernetes mode: a conversation that asks for a model claims it with a VoiceSession.

    The operator then places the model and binds the session to a worker, and the conversation
    moves there once the model is loaded; meanwhile it speaks with a model already resident,
    and it never asks a worker to load one. Each VoiceSession is owned by this orchestrator's
    Pod (the downward API's POD_NAME and POD_UID when unset here), so those of a Pod that goes
    away are garbage-collected, and a restarted container deletes its predecessor's.
    """

    model_config = ConfigDict(extra="forbid")

    namespace: str | None = None  # default: POD_NAMESPACE, else the kubeconfig's
    pod_name: str | None = None
    pod_uid: str | None = None
    kubeconfig: str | None = None  # default: in-cluster
    # A safety net for sessions nobody deletes; the conversation's end deletes its own.
    max_duration_seconds: int = Field(86400, ge=1, le=86400)


class OrchestratorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    # Serve /metrics and /healthz on this port only (e.g. for the cluster's probes and
    # Prometheus); unset: on the main port, beside the page.
    metrics_port: int | None = Field(None, ge=0, le=65535)
    # Credentials (see orchestrator/auth.py): with keys set, /ws and /api/* need a key or a
    # session token. Without keys, only a loopback address is served unless `insecure`.
    api_keys: list[str] = []
    insecure: bool = False
    # Browser pages from these origins may call in, besides the server's own ("*": any).
    allowed_origins: list[str] = []
    session_token_seconds: float = Field(300.0, gt=0)
    # Signs session tokens; set the same on every replica so that each accepts the others'.
    token_secret: str | None = None
    # Reaching TLS workers (CA, client certificate for mutual TLS), and the admin token that
    # lets this orchestrator ask a worker to load a model (DUPLEX_ADMIN_TOKEN).
    tts_tls: ClientTls | None = None
    admin_token: str | None = None
    workers: list[str] = []
    redis: str | None = None
    default_model: str = "piper-joe"
    default_voice: str | None = None
    language: str = "en"
    # Audio sent to the client ahead of real time: a small jitter cushion, and all that a
    # barge-in ever has to flush.
    client_lead_ms: int = Field(80, ge=0, le=1000)
    max_text_chars: int = Field(4096, ge=1)
    asr: AsrConfig = AsrConfig()
    responder: ResponderConfig = ResponderConfig()
    turn: TurnConfig = TurnConfig()
    barge_in: BargeInConfig = BargeInConfig()
    # A LiveKit server for WebRTC clients (room tokens at /api/livekit/token); None: WebSocket.
    livekit: LiveKitConfig | None = None
    # Kubernetes mode (see KubeSettings); None: models are loaded where the router asks.
    kube: KubeSettings | None = None
