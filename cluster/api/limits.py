"""Limits of the gallery.v1 contract: one definition each, read by the servicers, the gateway, the jobs and
the client. The proto's comments state the same numbers and the status code a request over each one gets.

One status code per kind of limit: a request that carries more than a limit allows (items of a repeated field,
bytes of a message, of an image or of an S3 object, pixels of an image) gets RESOURCE_EXHAUSTED; a value outside
its range (k, max_results, max_faces, the length of an id) or malformed gets INVALID_ARGUMENT."""

# Images (Rekognition's limits): inline bytes in a request, and objects read from S3; RESOURCE_EXHAUSTED over them,
# as over the 50-MP pixel limit (cluster/faces/image.py).
MAX_IMAGE_BYTES = 5 * 2**20
MAX_S3_IMAGE_BYTES = 15 * 2**20

# A gRPC message, either way: 10,000 faces of 512 float32 with metadata fit; larger requests get RESOURCE_EXHAUSTED.
MAX_MESSAGE_BYTES = 64 * 2**20

# Searches.
MAX_K = 1000  # candidates per query (k) of every search; INVALID_ARGUMENT outside 1..MAX_K
DEFAULT_K = 10  # k of SearchFacesByImage and SearchFaces when a request says 0
MAX_QUERIES = 1024  # queries per SearchByEmbedding; RESOURCE_EXHAUSTED over it

# Writes and reads by id.
MAX_FACES_PER_ADD = 10_000  # faces per AddEmbeddings; RESOURCE_EXHAUSTED over it
# face ids per GetFaces or DeleteFaces (RESOURCE_EXHAUSTED over it), faces per ListFaces page (a max_results
# over it: INVALID_ARGUMENT)
MAX_IDS_PER_CALL = 4096
DEFAULT_FACES_PER_PAGE = 1000  # faces per ListFaces page when a request says 0
MAX_COLLECTIONS_PER_PAGE = 1000  # collections per ListCollections page; INVALID_ARGUMENT over it
DEFAULT_COLLECTIONS_PER_PAGE = 100  # collections per ListCollections page when a request says 0
MAX_FACE_ID_LENGTH = 255  # characters of a face id; INVALID_ARGUMENT over it
MAX_EXTERNAL_IMAGE_ID_LENGTH = 255  # characters of IndexFaces' external_image_id, as Rekognition; INVALID_ARGUMENT

# Faces in an image.
MAX_FACES_PER_IMAGE = 1000  # max_faces of DetectFaces and IndexFaces; INVALID_ARGUMENT over it
DEFAULT_MAX_FACES = 100  # faces detected per image when a request says 0, as Rekognition
MAX_COMPARE_TARGET_FACES = 100  # faces of CompareFaces' target image compared, largest first

# Index building: IVF-PQ's 8-bit codebooks need at least one training vector per centroid (256);
# BuildIndex on fewer faces gets FAILED_PRECONDITION, and such collections are searched exactly.
MIN_FACES_TO_TRAIN = 256

# Bound on one call from the gateway to its shard or face workers when the caller sets no deadline;
# DEADLINE_EXCEEDED past it.
CALL_TIMEOUT_S = 120.0
# Bound on a maintenance call (sampling, building, compacting, measuring recall), which scales with the
# collection: building two 5M-face partitions on two cores takes tens of minutes, where 120 s failed a
# 10M-face build in benchmarks/scale.py. A worker that dies fails its call at once (Ray reports it);
# this only bounds one that hangs.
MAINTENANCE_CALL_TIMEOUT_S = 6 * 3600.0

# Audit records per QueryAuditLog answer (INVALID_ARGUMENT above), and the default when 0 is asked.
MAX_AUDIT_RECORDS_PER_PAGE = 1000
DEFAULT_AUDIT_RECORDS_PER_PAGE = 100

# Recall@10 a collection's searches aim for when neither CreateCollection nor the search asks for another
# (target_recall 0); a target must be in (0, 1], INVALID_ARGUMENT otherwise.
DEFAULT_TARGET_RECALL = 0.99
