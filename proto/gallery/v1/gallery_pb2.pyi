import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class IndexState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INDEX_STATE_UNSPECIFIED: _ClassVar[IndexState]
    INDEX_STATE_EXACT: _ClassVar[IndexState]
    INDEX_STATE_IVF_PQ: _ClassVar[IndexState]

class CalibrationSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CALIBRATION_SOURCE_UNSPECIFIED: _ClassVar[CalibrationSource]
    CALIBRATION_SOURCE_NONE: _ClassVar[CalibrationSource]
    CALIBRATION_SOURCE_MODEL: _ClassVar[CalibrationSource]
    CALIBRATION_SOURCE_GALLERY: _ClassVar[CalibrationSource]
    CALIBRATION_SOURCE_JOB: _ClassVar[CalibrationSource]

class QualityFilter(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    QUALITY_FILTER_UNSPECIFIED: _ClassVar[QualityFilter]
    QUALITY_FILTER_NONE: _ClassVar[QualityFilter]
    QUALITY_FILTER_AUTO: _ClassVar[QualityFilter]
    QUALITY_FILTER_LOW: _ClassVar[QualityFilter]
    QUALITY_FILTER_MEDIUM: _ClassVar[QualityFilter]
    QUALITY_FILTER_HIGH: _ClassVar[QualityFilter]
INDEX_STATE_UNSPECIFIED: IndexState
INDEX_STATE_EXACT: IndexState
INDEX_STATE_IVF_PQ: IndexState
CALIBRATION_SOURCE_UNSPECIFIED: CalibrationSource
CALIBRATION_SOURCE_NONE: CalibrationSource
CALIBRATION_SOURCE_MODEL: CalibrationSource
CALIBRATION_SOURCE_GALLERY: CalibrationSource
CALIBRATION_SOURCE_JOB: CalibrationSource
QUALITY_FILTER_UNSPECIFIED: QualityFilter
QUALITY_FILTER_NONE: QualityFilter
QUALITY_FILTER_AUTO: QualityFilter
QUALITY_FILTER_LOW: QualityFilter
QUALITY_FILTER_MEDIUM: QualityFilter
QUALITY_FILTER_HIGH: QualityFilter

class Embedding(_message.Message):
    __slots__ = ("values", "dimension")
    VALUES_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    values: bytes
    dimension: int
    def __init__(self, values: _Optional[bytes] = ..., dimension: _Optional[int] = ...) -> None: ...

class Image(_message.Message):
    __slots__ = ("bytes", "s3_object")
    BYTES_FIELD_NUMBER: _ClassVar[int]
    S3_OBJECT_FIELD_NUMBER: _ClassVar[int]
    bytes: bytes
    s3_object: S3Object
    def __init__(self, bytes: _Optional[bytes] = ..., s3_object: _Optional[_Union[S3Object, _Mapping]] = ...) -> None: ...

class S3Object(_message.Message):
    __slots__ = ("bucket", "name", "version")
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    bucket: str
    name: str
    version: str
    def __init__(self, bucket: _Optional[str] = ..., name: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class BoundingBox(_message.Message):
    __slots__ = ("left", "top", "width", "height")
    LEFT_FIELD_NUMBER: _ClassVar[int]
    TOP_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    left: float
    top: float
    width: float
    height: float
    def __init__(self, left: _Optional[float] = ..., top: _Optional[float] = ..., width: _Optional[float] = ..., height: _Optional[float] = ...) -> None: ...

class Landmark(_message.Message):
    __slots__ = ("type", "x", "y")
    class Type(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        TYPE_UNSPECIFIED: _ClassVar[Landmark.Type]
        EYE_RIGHT: _ClassVar[Landmark.Type]
        EYE_LEFT: _ClassVar[Landmark.Type]
        NOSE: _ClassVar[Landmark.Type]
        MOUTH_RIGHT: _ClassVar[Landmark.Type]
        MOUTH_LEFT: _ClassVar[Landmark.Type]
    TYPE_UNSPECIFIED: Landmark.Type
    EYE_RIGHT: Landmark.Type
    EYE_LEFT: Landmark.Type
    NOSE: Landmark.Type
    MOUTH_RIGHT: Landmark.Type
    MOUTH_LEFT: Landmark.Type
    TYPE_FIELD_NUMBER: _ClassVar[int]
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    type: Landmark.Type
    x: float
    y: float
    def __init__(self, type: _Optional[_Union[Landmark.Type, str]] = ..., x: _Optional[float] = ..., y: _Optional[float] = ...) -> None: ...

class FaceDetail(_message.Message):
    __slots__ = ("bounding_box", "landmarks", "confidence", "quality")
    BOUNDING_BOX_FIELD_NUMBER: _ClassVar[int]
    LANDMARKS_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    bounding_box: BoundingBox
    landmarks: _containers.RepeatedCompositeFieldContainer[Landmark]
    confidence: float
    quality: float
    def __init__(self, bounding_box: _Optional[_Union[BoundingBox, _Mapping]] = ..., landmarks: _Optional[_Iterable[_Union[Landmark, _Mapping]]] = ..., confidence: _Optional[float] = ..., quality: _Optional[float] = ...) -> None: ...

class Face(_message.Message):
    __slots__ = ("face_id", "external_image_id", "metadata", "embedding", "detail", "image_uri")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    FACE_ID_FIELD_NUMBER: _ClassVar[int]
    EXTERNAL_IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    IMAGE_URI_FIELD_NUMBER: _ClassVar[int]
    face_id: str
    external_image_id: str
    metadata: _containers.ScalarMap[str, str]
    embedding: Embedding
    detail: FaceDetail
    image_uri: str
    def __init__(self, face_id: _Optional[str] = ..., external_image_id: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., embedding: _Optional[_Union[Embedding, _Mapping]] = ..., detail: _Optional[_Union[FaceDetail, _Mapping]] = ..., image_uri: _Optional[str] = ...) -> None: ...

class Calibration(_message.Message):
    __slots__ = ("source", "impostor_pairs", "default_min_similarity", "default_fpir")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    IMPOSTOR_PAIRS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MIN_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_FPIR_FIELD_NUMBER: _ClassVar[int]
    source: CalibrationSource
    impostor_pairs: int
    default_min_similarity: float
    default_fpir: float
    def __init__(self, source: _Optional[_Union[CalibrationSource, str]] = ..., impostor_pairs: _Optional[int] = ..., default_min_similarity: _Optional[float] = ..., default_fpir: _Optional[float] = ...) -> None: ...

class CreateCollectionRequest(_message.Message):
    __slots__ = ("collection_id", "dimension", "train_threshold", "embedding_model", "default_fpir", "replicas", "target_recall")
    COLLECTION_ID_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    TRAIN_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_MODEL_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_FPIR_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    TARGET_RECALL_FIELD_NUMBER: _ClassVar[int]
    collection_id: str
    dimension: int
    train_threshold: int
    embedding_model: str
    default_fpir: float
    replicas: int
    target_recall: float
    def __init__(self, collection_id: _Optional[str] = ..., dimension: _Optional[int] = ..., train_threshold: _Optional[int] = ..., embedding_model: _Optional[str] = ..., default_fpir: _Optional[float] = ..., replicas: _Optional[int] = ..., target_recall: _Optional[float] = ...) -> None: ...

class CreateCollectionResponse(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: CollectionDescription
    def __init__(self, collection: _Optional[_Union[CollectionDescription, _Mapping]] = ...) -> None: ...

class DescribeCollectionRequest(_message.Message):
    __slots__ = ("collection_id",)
    COLLECTION_ID_FIELD_NUMBER: _ClassVar[int]
    collection_id: str
    def __init__(self, collection_id: _Optional[str] = ...) -> None: ...

class CollectionDescription(_message.Message):
    __slots__ = ("collection_id", "dimension", "face_count", "num_partitions", "index_state", "nlist", "pq_m", "pq_bits", "trained_on", "training", "train_threshold", "embedding_model", "calibration", "created_at", "memory_bytes", "replicas", "unavailable_partitions", "live_replicas", "search_tuning")
    COLLECTION_ID_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    FACE_COUNT_FIELD_NUMBER: _ClassVar[int]
    NUM_PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    INDEX_STATE_FIELD_NUMBER: _ClassVar[int]
    NLIST_FIELD_NUMBER: _ClassVar[int]
    PQ_M_FIELD_NUMBER: _ClassVar[int]
    PQ_BITS_FIELD_NUMBER: _ClassVar[int]
    TRAINED_ON_FIELD_NUMBER: _ClassVar[int]
    TRAINING_FIELD_NUMBER: _ClassVar[int]
    TRAIN_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_MODEL_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    UNAVAILABLE_PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    LIVE_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    SEARCH_TUNING_FIELD_NUMBER: _ClassVar[int]
    collection_id: str
    dimension: int
    face_count: int
    num_partitions: int
    index_state: IndexState
    nlist: int
    pq_m: int
    pq_bits: int
    trained_on: int
    training: bool
    train_threshold: int
    embedding_model: str
    calibration: Calibration
    created_at: _timestamp_pb2.Timestamp
    memory_bytes: int
    replicas: int
    unavailable_partitions: _containers.RepeatedScalarFieldContainer[int]
    live_replicas: int
    search_tuning: SearchTuning
    def __init__(self, collection_id: _Optional[str] = ..., dimension: _Optional[int] = ..., face_count: _Optional[int] = ..., num_partitions: _Optional[int] = ..., index_state: _Optional[_Union[IndexState, str]] = ..., nlist: _Optional[int] = ..., pq_m: _Optional[int] = ..., pq_bits: _Optional[int] = ..., trained_on: _Optional[int] = ..., training: _Optional[bool] = ..., train_threshold: _Optional[int] = ..., embedding_model: _Optional[str] = ..., calibration: _Optional[_Union[Calibration, _Mapping]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., memory_bytes: _Optional[int] = ..., replicas: _Optional[int] = ..., unavailable_partitions: _Optional[_Iterable[int]] = ..., live_replicas: _Optional[int] = ..., search_tuning: _Optional[_Union[SearchTuning, _Mapping]] = ...) -> None: ...

class SearchTuning(_message.Message):
    __slots__ = ("target_recall", "measured", "nprobe", "rerank_depth", "recall_at_10", "sample_queries", "points", "new_photo_recall_at_10")
    TARGET_RECALL_FIELD_NUMBER: _ClassVar[int]
    MEASURED_FIELD_NUMBER: _ClassVar[int]
    NPROBE_FIELD_NUMBER: _ClassVar[int]
    RERANK_DEPTH_FIELD_NUMBER: _ClassVar[int]
    RECALL_AT_10_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_QUERIES_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    NEW_PHOTO_RECALL_AT_10_FIELD_NUMBER: _ClassVar[int]
    target_recall: float
    measured: bool
    nprobe: int
    rerank_depth: int
    recall_at_10: float
    sample_queries: int
    points: _containers.RepeatedCompositeFieldContainer[SearchTuningPoint]
    new_photo_recall_at_10: float
    def __init__(self, target_recall: _Optional[float] = ..., measured: _Optional[bool] = ..., nprobe: _Optional[int] = ..., rerank_depth: _Optional[int] = ..., recall_at_10: _Optional[float] = ..., sample_queries: _Optional[int] = ..., points: _Optional[_Iterable[_Union[SearchTuningPoint, _Mapping]]] = ..., new_photo_recall_at_10: _Optional[float] = ...) -> None: ...

class SearchTuningPoint(_message.Message):
    __slots__ = ("nprobe", "rerank_depth", "recall_at_10", "recall_at_10_stderr")
    NPROBE_FIELD_NUMBER: _ClassVar[int]
    RERANK_DEPTH_FIELD_NUMBER: _ClassVar[int]
    RECALL_AT_10_FIELD_NUMBER: _ClassVar[int]
    RECALL_AT_10_STDERR_FIELD_NUMBER: _ClassVar[int]
    nprobe: int
    rerank_depth: int
    recall_at_10: float
    recall_at_10_stderr: float
    def __init__(self, nprobe: _Optional[int] = ..., rerank_depth: _Optional[int] = ..., recall_at_10: _Optional[float] = ..., recall_at_10_stderr: _Optional[float] = ...) -> None: ...

class ListCollectionsRequest(_message.Message):
    __slots__ = ("max_results", "next_token")
    MAX_RESULTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    max_results: int
    next_token: str
    def __init__(self, max_results: _Optional[int] = ..., next_token: _Optional[str] = ...) -> None: ...

class ListCollectionsResponse(_message.Message):
    __slots__ = ("collections", "next_token")
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    collections: _containers.RepeatedCompositeFieldContainer[CollectionDescription]
    next_token: str
    def __init__(self, collections: _Optional[_Iterable[_Union[CollectionDescription, _Mapping]]] = ..., next_token: _Optional[str] = ...) -> None: ...

class DeleteCollectionRequest(_message.Message):
    __slots__ = ("collection_id",)
    COLLECTION_ID_FIELD_NUMBER: _ClassVar[int]
    collection_id: str
    def __init__(self, collection_id: _Optional[str] = ...) -> None: ...

class DeleteCollectionResponse(_message.Message):
    __slots__ = ("deleted_face_count",)
    DELETED_FACE_COUNT_FIELD_NUMBER: _ClassVar[int]
    deleted_face_count: int
    def __init__(self, deleted_face_count: _Optional[int] = ...) -> None: ...

class NewFace(_message.Message):
    __slots__ = ("face_id", "external_image_id", "metadata", "embedding", "detail", "image_uri")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    FACE_ID_FIELD_NUMBER: _ClassVar[int]
    EXTERNAL_IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    IMAGE_URI_FIELD_NUMBER: _ClassVar[int]
    face_id: str
    external_image_id: str
    metadata: _containers.ScalarMap[str, str]
    embedding: Embedding
    detail: FaceDetail
    image_uri: str
    def __init__(self, face_id: _Optional[str] = ..., external_image_id: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., embedding: _Optional[_Union[Embedding, _Mapping]] = ..., detail: _Optional[_Union[FaceDetail, _Mapping]] = ..., image_uri: _Optional[str] = ...) -> None: ...

class AddEmbeddingsRequest(_message.Message):
    __slots__ = ("collection_id", "faces", "skip_existing", "packed")
    COLLECTION_ID_FIELD_NUMBER: _ClassVar[int]
    FACES_FIELD_NUMBER: _ClassVar[int]
    SKIP_EXISTING_FIELD_NUMBER: _ClassVar[int]
    PACKED_FIELD_NUMBER: _ClassVar[int]
    collection_id: str
    faces: _containers.RepeatedCompositeFieldContainer[NewFace]
    skip_existing: bool
    packed: PackedFaces
    def __init__(self, collection_id: _Optional[str] = ..., faces: _Optional[_Iterable[_Union[NewFace, _Mapping]]] = ..., skip_existing: _Optional[bool] = ..., packed: _Optional[_Union[PackedFaces, _Mapping]] = ...) -> None: ...

class PackedFaces(_message.Message):
    __slots__ = ("face_ids", "dimension", "embeddings")
    FACE_IDS_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    face_ids: _containers.RepeatedScalarFieldContainer[str]
    dimension: int
    embeddings: bytes
    def __init__(self, face_ids: _Optional[_Iterable[str]] = ..., dimension: _Optional[int] = ..., embeddings: _Optional[bytes] = ...) -> None: ...

class AddEmbeddingsResponse(_message.Message):
    __slots__ = ("face_ids", "skipped_face_ids", "face_count")
    FACE_IDS_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FACE_IDS_FIELD_NUMBER: _ClassVar[int]
    FACE_COUNT_FIELD_NUMBER: _ClassVar[int]
    face_ids: _containers.RepeatedScalarFieldContainer[str]
    skipped_face_ids: _containers.RepeatedScalarFieldContainer[str]
    face_count: int
    def __init__(self, face_ids: _Optional[_Iterable[str]] = ..., skipped_face_ids: _Optional[_Iterable[str]] = ..., face_count: _Optional[int] = ...) -> None: ...

class SearchByEmbeddingRequest(_message.Message):
    __slots__ = ("collection_id", "queries", "k", "nprobe", "min_similarity", "purpose", "case_id", "allow_partial", "target_fpir", "target_recall", "ids_only")
    COLLECTION_ID_FIELD_NUMBER: _ClassVar[int]
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    NPROBE_FIELD_NUMBER: _ClassVar[int]
    MIN_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    CASE_ID_FIELD_NUMBER: _ClassVar[int]
    ALLOW_PARTIAL_FIELD_NUMBER: _ClassVar[int]
    TARGET_FPIR_FIELD_NUMBER: _ClassVar[int]
    TARGET_RECALL_FIELD_NUMBER: _ClassVar[int]
    IDS_ONLY_FIELD_NUMBER: _ClassVar[int]
    collection_id: str
    queries: _containers.RepeatedCompositeFieldContainer[Embedding]
    k: int
    nprobe: int
    min_similarity: float
    purpose: str
    case_id: str
    allow_partial: bool
    target_fpir: float
    target_recall: float
    ids_only: bool
    def __init__(self, collection_id: _Optional[str] = ..., queries: _Optional[_Iterable[_Union[Embedding, _Mapping]]] = ..., k: _Optional[int] = ..., nprobe: _Optional[int] = ..., min_similarity: _Optional[float] = ..., purpose: _Optional[str] = ..., case_id: _Optional[str] = ..., allow_partial: _Optional[bool] = ..., target_fpir: _Optional[float] = ..., target_recall: _Optional[float] = ..., ids_only: _Optional[bool] = ...) -> None: ...

class Candidate(_message.Message):
    __slots__ = ("face", "similarity", "false_match_rate", "gallery_false_match_probability", "false_match_rate_is_bound")
    FACE_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    FALSE_MATCH_RATE_FIELD_NUMBER: _ClassVar[int]
    GALLERY_FALSE_MATCH_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    FALSE_MATCH_RATE_IS_BOUND_FIELD_NUMBER: _ClassVar[int]
    face: Face
    similarity: float
    false_match_rate: float
    gallery_false_match_probability: float
    false_match_rate_is_bound: bool
    def __init__(self, face: _Optional[_Union[Face, _Mapping]] = ..., similarity: _Optional[float] = ..., false_match_rate: _Optional[float] = ..., gallery_false_match_probability: _Optional[float] = ..., false_match_rate_is_bound: _Optional[bool] = ...) -> None: ...

class SearchResult(_message.Message):
    __slots__ = ("candidates",)
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    def __init__(self, candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ...) -> None: ...

class SearchByEmbeddingResponse(_message.Message):
    __slots__ = ("results", "gallery_size", "calibration", "index_state", "partial", "missing_partitions", "threshold_used", "fpir_bound", "packed")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    GALLERY_SIZE_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_FIELD_NUMBER: _ClassVar[int]
    INDEX_STATE_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_FIELD_NUMBER: _ClassVar[int]
    MISSING_PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_USED_FIELD_NUMBER: _ClassVar[int]
    FPIR_BOUND_FIELD_NUMBER: _ClassVar[int]
    PACKED_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SearchResult]
    gallery_size: int
    calibration: Calibration
    index_state: IndexState
    partial: bool
    missing_partitions: _containers.RepeatedScalarFieldContainer[int]
    threshold_used: float
    fpir_bound: float
    packed: PackedCandidates
    def __init__(self, results: _Optional[_Iterable[_Union[SearchResult, _Mapping]]] = ..., gallery_size: _Optional[int] = ..., calibration: _Optional[_Union[Calibration, _Mapping]] = ..., index_state: _Optional[_Union[IndexState, str]] = ..., partial: _Optional[bool] = ..., missing_partitions: _Optional[_Iterable[int]] = ..., threshold_used: _Optional[float] = ..., fpir_bound: _Optional[float] = ..., packed: _Optional[_Union[PackedCandidates, _Mapping]] = ...) -> None: ...

class PackedCandidates(_message.Message):
    __slots__ = ("counts", "face_ids", "similarities", "gallery_false_match_probabilities")
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    FACE_IDS_FIELD_NUMBER: _ClassVar[int]
    SIMILARITIES_FIELD_NUMBER: _ClassVar[int]
    GALLERY_FALSE_MATCH_PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    counts: _containers.RepeatedScalarFieldContainer[int]
    face_ids: _containers.RepeatedScalarFieldContainer[str]
    similarities: bytes
    gallery_false_match_probabilities: bytes
    def __init__(self, counts: _Optional[_Iterable[int]] = ..., face_ids: _Optional[_Iterable[str]] = ..., similarities: _Optional[bytes] = ..., gallery_false_match_probabilities: _Optional[bytes] = ...) -> None: ...

class ListFacesRequest(_message.Message):
    __slots__ = ("collection_id", "max_results", "next_token", "include_embeddings")
    COLLECTION_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_RESULTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    collection_id: str
    max_results: int
    next_token: str
    include_embeddings: bool
    def __init__(self, collection_id: _Optional[str] = ..., max_results: _Optional[int] = ..., next_token: _Optional[str] = ..., include_embeddings: _Optional[bool] = ...) -> None: ...

class ListFacesResponse(_message.Message):
    __slots__ = ("faces", "next_token")
    FACES_FIELD_NUMBER: _ClassVar[int]
    NEXT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    faces: _containers.RepeatedCompositeFieldContainer[Face]
    next_token: str
    def __init__(self, faces: _Optional[_Iterable[_Union[Face, _Mapping]]] = ..., next_token: _Optional[str] = ...) -> None: ...

class GetFacesRequest(_message.Message):
    __slots__ = ("collection_id", "face_ids", "include_embeddings")
    COLLECTION_ID_FIELD_NUMBER: _ClassVar[int]
    FACE_IDS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    collection_id: str
    face_ids: _containers.RepeatedScalarFieldContainer[str]
    include_embeddings: bool
    def __init__(self, collection_id: _Optional[str] = ..., face_ids: _Optional[_Iterable[str]] = ..., include_embeddings: _Optional[bool] = ...) -> None: ...

class GetFacesResponse(_message.Message):
    __slots__ = ("faces", "unknown_face_ids")
    FACES_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_FACE_IDS_FIELD_NUMBER: _ClassVar[int]
    faces: _containers.RepeatedCompositeFieldContainer[Face]
    unknown_face_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, faces: _Optional[_Iterable[_Union[Face, _Mapping]]] = ..., unknown_face_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteFacesRequest(_message.Message):
    __slots__ = ("collection_id", "face_ids")
    COLLECTION_ID_FIELD_NUMBER: _ClassVar[int]
    FACE_IDS_FIELD_NUMBER: _ClassVar[int]
    collection_id: str
    face_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, collection_id: _Optional[str] = ..., face_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteFacesResponse(_message.Message):
    __slots__ = ("deleted_face_ids", "unknown_face_ids", "face_count")
    DELETED_FACE_IDS_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_FACE_IDS_FIELD_NUMBER: _ClassVar[int]
    FACE_COUNT_FIELD_NUMBER: _ClassVar[int]
    deleted_face_ids: _containers.RepeatedScalarFieldContainer[str]
    unknown_face_ids: _containers.RepeatedScalarFieldContainer[str]
    face_count: int
    def __init__(self, deleted_face_ids: _Optional[_Iterable[str]] = ..., unknown_face_ids: _Optional[_Iterable[str]] = ..., face_count: _Optional[int] = ...) -> None: ...

class DetectFacesRequest(_message.Message):
    __slots__ = ("image", "max_faces")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    MAX_FACES_FIELD_NUMBER: _ClassVar[int]
    image: Image
    max_faces: int
    def __init__(self, image: _Optional[_Union[Image, _Mapping]] = ..., max_faces: _Optional[int] = ...) -> None: ...

class DetectFacesResponse(_message.Message):
    __slots__ = ("faces", "image_width", "image_height")
    FACES_FIELD_NUMBER: _ClassVar[int]
    IMAGE_WIDTH_FIELD_NUMBER: _ClassVar[int]
    IMAGE_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    faces: _containers.RepeatedCompositeFieldContainer[FaceDetail]
    image_width: int
    image_height: int
    def __init__(self, faces: _Optional[_Iterable[_Union[FaceDetail, _Mapping]]] = ..., image_width: _Optional[int] = ..., image_height: _Optional[int] = ...) -> None: ...

class IndexFacesRequest(_message.Message):
    __slots__ = ("collection_id", "image", "external_image_id", "max_faces", "quality_filter", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    COLLECTION_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    EXTERNAL_IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_FACES_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FILTER_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    collection_id: str
    image: Image
    external_image_id: str
    max_faces: int
    quality_filter: QualityFilter
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, collection_id: _Optional[str] = ..., image: _Optional[_Union[Image, _Mapping]] = ..., external_image_id: _Optional[str] = ..., max_faces: _Optional[int] = ..., quality_filter: _Optional[_Union[QualityFilter, str]] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class UnindexedFace(_message.Message):
    __slots__ = ("detail", "reasons")
    class Reason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        REASON_UNSPECIFIED: _ClassVar[UnindexedFace.Reason]
        EXCEEDS_MAX_FACES: _ClassVar[UnindexedFace.Reason]
        LOW_QUALITY: _ClassVar[UnindexedFace.Reason]
        SMALL_FACE: _ClassVar[UnindexedFace.Reason]
        ALREADY_INDEXED: _ClassVar[UnindexedFace.Reason]
    REASON_UNSPECIFIED: UnindexedFace.Reason
    EXCEEDS_MAX_FACES: UnindexedFace.Reason
    LOW_QUALITY: UnindexedFace.Reason
    SMALL_FACE: UnindexedFace.Reason
    ALREADY_INDEXED: UnindexedFace.Reason
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    detail: FaceDetail
    reasons: _containers.RepeatedScalarFieldContainer[UnindexedFace.Reason]
    def __init__(self, detail: _Optional[_Union[FaceDetail, _Mapping]] = ..., reasons: _Optional[_Iterable[_Union[UnindexedFace.Reason, str]]] = ...) -> None: ...

class IndexFacesResponse(_message.Message):
    __slots__ = ("indexed_faces", "unindexed_faces", "embedding_model")
    INDEXED_FACES_FIELD_NUMBER: _ClassVar[int]
    UNINDEXED_FACES_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_MODEL_FIELD_NUMBER: _ClassVar[int]
    indexed_faces: _containers.RepeatedCompositeFieldContainer[Face]
    unindexed_faces: _containers.RepeatedCompositeFieldContainer[UnindexedFace]
    embedding_model: str
    def __init__(self, indexed_faces: _Optional[_Iterable[_Union[Face, _Mapping]]] = ..., unindexed_faces: _Optional[_Iterable[_Union[UnindexedFace, _Mapping]]] = ..., embedding_model: _Optional[str] = ...) -> None: ...

class SearchFacesByImageRequest(_message.Message):
    __slots__ = ("collection_id", "image", "k", "min_similarity", "all_faces", "quality_filter", "purpose", "case_id", "allow_partial", "target_fpir")
    COLLECTION_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    MIN_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    ALL_FACES_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FILTER_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    CASE_ID_FIELD_NUMBER: _ClassVar[int]
    ALLOW_PARTIAL_FIELD_NUMBER: _ClassVar[int]
    TARGET_FPIR_FIELD_NUMBER: _ClassVar[int]
    collection_id: str
    image: Image
    k: int
    min_similarity: float
    all_faces: bool
    quality_filter: QualityFilter
    purpose: str
    case_id: str
    allow_partial: bool
    target_fpir: float
    def __init__(self, collection_id: _Optional[str] = ..., image: _Optional[_Union[Image, _Mapping]] = ..., k: _Optional[int] = ..., min_similarity: _Optional[float] = ..., all_faces: _Optional[bool] = ..., quality_filter: _Optional[_Union[QualityFilter, str]] = ..., purpose: _Optional[str] = ..., case_id: _Optional[str] = ..., allow_partial: _Optional[bool] = ..., target_fpir: _Optional[float] = ...) -> None: ...

class FaceSearchResult(_message.Message):
    __slots__ = ("searched_face", "candidates")
    SEARCHED_FACE_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    searched_face: FaceDetail
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    def __init__(self, searched_face: _Optional[_Union[FaceDetail, _Mapping]] = ..., candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ...) -> None: ...

class SearchFacesByImageResponse(_message.Message):
    __slots__ = ("results", "gallery_size", "calibration", "partial", "missing_partitions", "threshold_used", "fpir_bound")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    GALLERY_SIZE_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_FIELD_NUMBER: _ClassVar[int]
    MISSING_PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_USED_FIELD_NUMBER: _ClassVar[int]
    FPIR_BOUND_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[FaceSearchResult]
    gallery_size: int
    calibration: Calibration
    partial: bool
    missing_partitions: _containers.RepeatedScalarFieldContainer[int]
    threshold_used: float
    fpir_bound: float
    def __init__(self, results: _Optional[_Iterable[_Union[FaceSearchResult, _Mapping]]] = ..., gallery_size: _Optional[int] = ..., calibration: _Optional[_Union[Calibration, _Mapping]] = ..., partial: _Optional[bool] = ..., missing_partitions: _Optional[_Iterable[int]] = ..., threshold_used: _Optional[float] = ..., fpir_bound: _Optional[float] = ...) -> None: ...

class SearchFacesRequest(_message.Message):
    __slots__ = ("collection_id", "face_id", "k", "min_similarity", "purpose", "case_id", "allow_partial", "target_fpir")
    COLLECTION_ID_FIELD_NUMBER: _ClassVar[int]
    FACE_ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    MIN_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    CASE_ID_FIELD_NUMBER: _ClassVar[int]
    ALLOW_PARTIAL_FIELD_NUMBER: _ClassVar[int]
    TARGET_FPIR_FIELD_NUMBER: _ClassVar[int]
    collection_id: str
    face_id: str
    k: int
    min_similarity: float
    purpose: str
    case_id: str
    allow_partial: bool
    target_fpir: float
    def __init__(self, collection_id: _Optional[str] = ..., face_id: _Optional[str] = ..., k: _Optional[int] = ..., min_similarity: _Optional[float] = ..., purpose: _Optional[str] = ..., case_id: _Optional[str] = ..., allow_partial: _Optional[bool] = ..., target_fpir: _Optional[float] = ...) -> None: ...

class SearchFacesResponse(_message.Message):
    __slots__ = ("searched_face_id", "candidates", "gallery_size", "calibration", "partial", "missing_partitions", "threshold_used", "fpir_bound")
    SEARCHED_FACE_ID_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    GALLERY_SIZE_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_FIELD_NUMBER: _ClassVar[int]
    MISSING_PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_USED_FIELD_NUMBER: _ClassVar[int]
    FPIR_BOUND_FIELD_NUMBER: _ClassVar[int]
    searched_face_id: str
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    gallery_size: int
    calibration: Calibration
    partial: bool
    missing_partitions: _containers.RepeatedScalarFieldContainer[int]
    threshold_used: float
    fpir_bound: float
    def __init__(self, searched_face_id: _Optional[str] = ..., candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ..., gallery_size: _Optional[int] = ..., calibration: _Optional[_Union[Calibration, _Mapping]] = ..., partial: _Optional[bool] = ..., missing_partitions: _Optional[_Iterable[int]] = ..., threshold_used: _Optional[float] = ..., fpir_bound: _Optional[float] = ...) -> None: ...

class CompareFacesRequest(_message.Message):
    __slots__ = ("source_image", "target_image", "min_similarity", "purpose", "case_id", "embedding_model", "target_fpir")
    SOURCE_IMAGE_FIELD_NUMBER: _ClassVar[int]
    TARGET_IMAGE_FIELD_NUMBER: _ClassVar[int]
    MIN_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    CASE_ID_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_MODEL_FIELD_NUMBER: _ClassVar[int]
    TARGET_FPIR_FIELD_NUMBER: _ClassVar[int]
    source_image: Image
    target_image: Image
    min_similarity: float
    purpose: str
    case_id: str
    embedding_model: str
    target_fpir: float
    def __init__(self, source_image: _Optional[_Union[Image, _Mapping]] = ..., target_image: _Optional[_Union[Image, _Mapping]] = ..., min_similarity: _Optional[float] = ..., purpose: _Optional[str] = ..., case_id: _Optional[str] = ..., embedding_model: _Optional[str] = ..., target_fpir: _Optional[float] = ...) -> None: ...

class CompareFacesMatch(_message.Message):
    __slots__ = ("face", "similarity", "false_match_rate", "false_match_rate_is_bound")
    FACE_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    FALSE_MATCH_RATE_FIELD_NUMBER: _ClassVar[int]
    FALSE_MATCH_RATE_IS_BOUND_FIELD_NUMBER: _ClassVar[int]
    face: FaceDetail
    similarity: float
    false_match_rate: float
    false_match_rate_is_bound: bool
    def __init__(self, face: _Optional[_Union[FaceDetail, _Mapping]] = ..., similarity: _Optional[float] = ..., false_match_rate: _Optional[float] = ..., false_match_rate_is_bound: _Optional[bool] = ...) -> None: ...

class CompareFacesResponse(_message.Message):
    __slots__ = ("source_face", "face_matches", "unmatched_faces", "embedding_model", "threshold_used", "fpir_bound")
    SOURCE_FACE_FIELD_NUMBER: _ClassVar[int]
    FACE_MATCHES_FIELD_NUMBER: _ClassVar[int]
    UNMATCHED_FACES_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_MODEL_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_USED_FIELD_NUMBER: _ClassVar[int]
    FPIR_BOUND_FIELD_NUMBER: _ClassVar[int]
    source_face: FaceDetail
    face_matches: _containers.RepeatedCompositeFieldContainer[CompareFacesMatch]
    unmatched_faces: _containers.RepeatedCompositeFieldContainer[FaceDetail]
    embedding_model: str
    threshold_used: float
    fpir_bound: float
    def __init__(self, source_face: _Optional[_Union[FaceDetail, _Mapping]] = ..., face_matches: _Optional[_Iterable[_Union[CompareFacesMatch, _Mapping]]] = ..., unmatched_faces: _Optional[_Iterable[_Union[FaceDetail, _Mapping]]] = ..., embedding_model: _Optional[str] = ..., threshold_used: _Optional[float] = ..., fpir_bound: _Optional[float] = ...) -> None: ...

class BuildIndexRequest(_message.Message):
    __slots__ = ("collection_id",)
    COLLECTION_ID_FIELD_NUMBER: _ClassVar[int]
    collection_id: str
    def __init__(self, collection_id: _Optional[str] = ...) -> None: ...

class BuildIndexResponse(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: CollectionDescription
    def __init__(self, collection: _Optional[_Union[CollectionDescription, _Mapping]] = ...) -> None: ...

class QueryAuditLogRequest(_message.Message):
    __slots__ = ("since", "until", "identity", "collection_id", "case_id", "max_results")
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_ID_FIELD_NUMBER: _ClassVar[int]
    CASE_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_RESULTS_FIELD_NUMBER: _ClassVar[int]
    since: _timestamp_pb2.Timestamp
    until: _timestamp_pb2.Timestamp
    identity: str
    collection_id: str
    case_id: str
    max_results: int
    def __init__(self, since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., until: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., identity: _Optional[str] = ..., collection_id: _Optional[str] = ..., case_id: _Optional[str] = ..., max_results: _Optional[int] = ...) -> None: ...

class AuditRecord(_message.Message):
    __slots__ = ("time", "identity", "method", "collection_id", "purpose", "case_id", "code", "hash", "json")
    TIME_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_ID_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    CASE_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    time: str
    identity: str
    method: str
    collection_id: str
    purpose: str
    case_id: str
    code: str
    hash: str
    json: str
    def __init__(self, time: _Optional[str] = ..., identity: _Optional[str] = ..., method: _Optional[str] = ..., collection_id: _Optional[str] = ..., purpose: _Optional[str] = ..., case_id: _Optional[str] = ..., code: _Optional[str] = ..., hash: _Optional[str] = ..., json: _Optional[str] = ...) -> None: ...

class QueryAuditLogResponse(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[AuditRecord]
    def __init__(self, records: _Optional[_Iterable[_Union[AuditRecord, _Mapping]]] = ...) -> None: ...

class SetCalibrationRequest(_message.Message):
    __slots__ = ("collection_id", "impostor_pairs", "impostor_tail", "impostor_quantiles")
    COLLECTION_ID_FIELD_NUMBER: _ClassVar[int]
    IMPOSTOR_PAIRS_FIELD_NUMBER: _ClassVar[int]
    IMPOSTOR_TAIL_FIELD_NUMBER: _ClassVar[int]
    IMPOSTOR_QUANTILES_FIELD_NUMBER: _ClassVar[int]
    collection_id: str
    impostor_pairs: int
    impostor_tail: _containers.RepeatedScalarFieldContainer[float]
    impostor_quantiles: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, collection_id: _Optional[str] = ..., impostor_pairs: _Optional[int] = ..., impostor_tail: _Optional[_Iterable[float]] = ..., impostor_quantiles: _Optional[_Iterable[float]] = ...) -> None: ...

class SetCalibrationResponse(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: CollectionDescription
    def __init__(self, collection: _Optional[_Union[CollectionDescription, _Mapping]] = ...) -> None: ...
