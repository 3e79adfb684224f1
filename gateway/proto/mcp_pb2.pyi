from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NetworkAccess(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NETWORK_NONE: _ClassVar[NetworkAccess]
    NETWORK_HOST: _ClassVar[NetworkAccess]
    NETWORK_RESTRICTED: _ClassVar[NetworkAccess]

class TaskStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_CREATED: _ClassVar[TaskStatus]
    TASK_QUEUED: _ClassVar[TaskStatus]
    TASK_RUNNING: _ClassVar[TaskStatus]
    TASK_COMPLETED: _ClassVar[TaskStatus]
    TASK_FAILED: _ClassVar[TaskStatus]
    TASK_CANCELLED: _ClassVar[TaskStatus]
    TASK_TIMED_OUT: _ClassVar[TaskStatus]

class TaskType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_COMMAND: _ClassVar[TaskType]
    TASK_FILE: _ClassVar[TaskType]
    TASK_HTTP_REQUEST: _ClassVar[TaskType]

class OutputChunkType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHUNK_STDOUT: _ClassVar[OutputChunkType]
    CHUNK_STDERR: _ClassVar[OutputChunkType]
    CHUNK_EXIT_CODE: _ClassVar[OutputChunkType]
    CHUNK_EVENT: _ClassVar[OutputChunkType]
NETWORK_NONE: NetworkAccess
NETWORK_HOST: NetworkAccess
NETWORK_RESTRICTED: NetworkAccess
TASK_CREATED: TaskStatus
TASK_QUEUED: TaskStatus
TASK_RUNNING: TaskStatus
TASK_COMPLETED: TaskStatus
TASK_FAILED: TaskStatus
TASK_CANCELLED: TaskStatus
TASK_TIMED_OUT: TaskStatus
TASK_COMMAND: TaskType
TASK_FILE: TaskType
TASK_HTTP_REQUEST: TaskType
CHUNK_STDOUT: OutputChunkType
CHUNK_STDERR: OutputChunkType
CHUNK_EXIT_CODE: OutputChunkType
CHUNK_EVENT: OutputChunkType

class ListTasksRequest(_message.Message):
    __slots__ = ("status", "since", "limit", "page_token")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    status: TaskStatus
    since: str
    limit: int
    page_token: str
    def __init__(self, status: _Optional[_Union[TaskStatus, str]] = ..., since: _Optional[str] = ..., limit: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListTasksResponse(_message.Message):
    __slots__ = ("tasks", "next_page_token")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[TaskInfo]
    next_page_token: str
    def __init__(self, tasks: _Optional[_Iterable[_Union[TaskInfo, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class HealthRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HealthResponse(_message.Message):
    __slots__ = ("status", "version", "uptime_seconds")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    status: str
    version: str
    uptime_seconds: int
    def __init__(self, status: _Optional[str] = ..., version: _Optional[str] = ..., uptime_seconds: _Optional[int] = ...) -> None: ...

class CommandRequest(_message.Message):
    __slots__ = ("command", "args", "env", "cwd", "timeout", "metadata", "sandbox_config")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    CWD_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    SANDBOX_CONFIG_FIELD_NUMBER: _ClassVar[int]
    command: str
    args: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.ScalarMap[str, str]
    cwd: str
    timeout: int
    metadata: _containers.ScalarMap[str, str]
    sandbox_config: SandboxConfig
    def __init__(self, command: _Optional[str] = ..., args: _Optional[_Iterable[str]] = ..., env: _Optional[_Mapping[str, str]] = ..., cwd: _Optional[str] = ..., timeout: _Optional[int] = ..., metadata: _Optional[_Mapping[str, str]] = ..., sandbox_config: _Optional[_Union[SandboxConfig, _Mapping]] = ...) -> None: ...

class SandboxConfig(_message.Message):
    __slots__ = ("enabled", "network_access", "resource_limits", "rw_paths", "ro_paths", "denied_paths", "allowed_hosts")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    NETWORK_ACCESS_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_LIMITS_FIELD_NUMBER: _ClassVar[int]
    RW_PATHS_FIELD_NUMBER: _ClassVar[int]
    RO_PATHS_FIELD_NUMBER: _ClassVar[int]
    DENIED_PATHS_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_HOSTS_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    network_access: NetworkAccess
    resource_limits: ResourceLimits
    rw_paths: _containers.RepeatedScalarFieldContainer[str]
    ro_paths: _containers.RepeatedScalarFieldContainer[str]
    denied_paths: _containers.RepeatedScalarFieldContainer[str]
    allowed_hosts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, enabled: _Optional[bool] = ..., network_access: _Optional[_Union[NetworkAccess, str]] = ..., resource_limits: _Optional[_Union[ResourceLimits, _Mapping]] = ..., rw_paths: _Optional[_Iterable[str]] = ..., ro_paths: _Optional[_Iterable[str]] = ..., denied_paths: _Optional[_Iterable[str]] = ..., allowed_hosts: _Optional[_Iterable[str]] = ...) -> None: ...

class ResourceLimits(_message.Message):
    __slots__ = ("cpu_limit", "memory_limit", "pids_limit", "io_weight")
    CPU_LIMIT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_LIMIT_FIELD_NUMBER: _ClassVar[int]
    PIDS_LIMIT_FIELD_NUMBER: _ClassVar[int]
    IO_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    cpu_limit: float
    memory_limit: int
    pids_limit: int
    io_weight: int
    def __init__(self, cpu_limit: _Optional[float] = ..., memory_limit: _Optional[int] = ..., pids_limit: _Optional[int] = ..., io_weight: _Optional[int] = ...) -> None: ...

class TaskCreatedResponse(_message.Message):
    __slots__ = ("task_id", "status", "created_at")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    status: TaskStatus
    created_at: str
    def __init__(self, task_id: _Optional[str] = ..., status: _Optional[_Union[TaskStatus, str]] = ..., created_at: _Optional[str] = ...) -> None: ...

class ExecuteAndWaitRequest(_message.Message):
    __slots__ = ("request", "wait_seconds")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    request: CommandRequest
    wait_seconds: int
    def __init__(self, request: _Optional[_Union[CommandRequest, _Mapping]] = ..., wait_seconds: _Optional[int] = ...) -> None: ...

class TaskStatusRequest(_message.Message):
    __slots__ = ("task_id", "offset")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    offset: int
    def __init__(self, task_id: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class TaskStatusResponse(_message.Message):
    __slots__ = ("task_info", "result")
    TASK_INFO_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    task_info: TaskInfo
    result: TaskResult
    def __init__(self, task_info: _Optional[_Union[TaskInfo, _Mapping]] = ..., result: _Optional[_Union[TaskResult, _Mapping]] = ...) -> None: ...

class TaskInfo(_message.Message):
    __slots__ = ("task_id", "task_type", "status", "created_at", "started_at", "completed_at", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_TYPE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_AT_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    task_type: TaskType
    status: TaskStatus
    created_at: str
    started_at: str
    completed_at: str
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, task_id: _Optional[str] = ..., task_type: _Optional[_Union[TaskType, str]] = ..., status: _Optional[_Union[TaskStatus, str]] = ..., created_at: _Optional[str] = ..., started_at: _Optional[str] = ..., completed_at: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class TaskResult(_message.Message):
    __slots__ = ("exit_code", "stdout", "stderr", "resource_usage", "execution_time_ms")
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    STDOUT_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_USAGE_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    exit_code: int
    stdout: str
    stderr: str
    resource_usage: ResourceUsage
    execution_time_ms: int
    def __init__(self, exit_code: _Optional[int] = ..., stdout: _Optional[str] = ..., stderr: _Optional[str] = ..., resource_usage: _Optional[_Union[ResourceUsage, _Mapping]] = ..., execution_time_ms: _Optional[int] = ...) -> None: ...

class ResourceUsage(_message.Message):
    __slots__ = ("cpu_time_ms", "max_memory_kb", "io_read_bytes", "io_write_bytes", "egress_bytes_sent", "egress_bytes_received")
    CPU_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_MEMORY_KB_FIELD_NUMBER: _ClassVar[int]
    IO_READ_BYTES_FIELD_NUMBER: _ClassVar[int]
    IO_WRITE_BYTES_FIELD_NUMBER: _ClassVar[int]
    EGRESS_BYTES_SENT_FIELD_NUMBER: _ClassVar[int]
    EGRESS_BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    cpu_time_ms: int
    max_memory_kb: int
    io_read_bytes: int
    io_write_bytes: int
    egress_bytes_sent: int
    egress_bytes_received: int
    def __init__(self, cpu_time_ms: _Optional[int] = ..., max_memory_kb: _Optional[int] = ..., io_read_bytes: _Optional[int] = ..., io_write_bytes: _Optional[int] = ..., egress_bytes_sent: _Optional[int] = ..., egress_bytes_received: _Optional[int] = ...) -> None: ...

class TaskOutputChunk(_message.Message):
    __slots__ = ("task_id", "type", "data", "timestamp_ms", "offset")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    type: OutputChunkType
    data: bytes
    timestamp_ms: int
    offset: int
    def __init__(self, task_id: _Optional[str] = ..., type: _Optional[_Union[OutputChunkType, str]] = ..., data: _Optional[bytes] = ..., timestamp_ms: _Optional[int] = ..., offset: _Optional[int] = ...) -> None: ...

class ReadFileRequest(_message.Message):
    __slots__ = ("path", "workspace")
    PATH_FIELD_NUMBER: _ClassVar[int]
    WORKSPACE_FIELD_NUMBER: _ClassVar[int]
    path: str
    workspace: str
    def __init__(self, path: _Optional[str] = ..., workspace: _Optional[str] = ...) -> None: ...

class ReadFileResponse(_message.Message):
    __slots__ = ("path", "content", "mime_type", "error")
    PATH_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    MIME_TYPE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    path: str
    content: bytes
    mime_type: str
    error: str
    def __init__(self, path: _Optional[str] = ..., content: _Optional[bytes] = ..., mime_type: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class WriteFileRequest(_message.Message):
    __slots__ = ("path", "content", "create_dirs", "mode", "workspace")
    PATH_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    CREATE_DIRS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    WORKSPACE_FIELD_NUMBER: _ClassVar[int]
    path: str
    content: bytes
    create_dirs: bool
    mode: int
    workspace: str
    def __init__(self, path: _Optional[str] = ..., content: _Optional[bytes] = ..., create_dirs: _Optional[bool] = ..., mode: _Optional[int] = ..., workspace: _Optional[str] = ...) -> None: ...

class WriteFileResponse(_message.Message):
    __slots__ = ("path", "bytes_written", "error")
    PATH_FIELD_NUMBER: _ClassVar[int]
    BYTES_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    path: str
    bytes_written: int
    error: str
    def __init__(self, path: _Optional[str] = ..., bytes_written: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class DeleteFileRequest(_message.Message):
    __slots__ = ("path", "recursive", "workspace")
    PATH_FIELD_NUMBER: _ClassVar[int]
    RECURSIVE_FIELD_NUMBER: _ClassVar[int]
    WORKSPACE_FIELD_NUMBER: _ClassVar[int]
    path: str
    recursive: bool
    workspace: str
    def __init__(self, path: _Optional[str] = ..., recursive: _Optional[bool] = ..., workspace: _Optional[str] = ...) -> None: ...

class DeleteFileResponse(_message.Message):
    __slots__ = ("path", "success", "error")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    path: str
    success: bool
    error: str
    def __init__(self, path: _Optional[str] = ..., success: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...
