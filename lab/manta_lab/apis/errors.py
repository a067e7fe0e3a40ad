"""Error responses of the lab SAPI, IMGAPI and VMAPI.

Every error is a JSON body ``{"code": "<RestCode>", "message": "<text>"}``;
validation errors of IMGAPI and VMAPI add ``"errors": [{"field", "code",
"message"}]`` (reference/triton_apis.md §0). Status codes are those of the
restify 4 servers and of each service's own error classes.
"""


class ApiError(Exception):
    """An HTTP error response. ``body`` is sent as JSON."""

    def __init__(self, status, code, message="", errors=None, headers=None):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors
        self.headers = headers or {}

    @property
    def body(self):
        b = {"code": self.code, "message": self.message}
        if self.errors is not None:
            b["errors"] = self.errors
        return b


def field_error(field, code="Invalid", message=None):
    e = {"field": field, "code": code}
    if message is None:
        message = {"Invalid": "Invalid parameter", "MissingParameter": "Is required",
                   "Duplicate": "Already exists"}.get(code, code)
    e["message"] = message
    return e


# ---- restify 4 generic errors (all three services) -------------------------

def not_found(message):
    return ApiError(404, "ResourceNotFound", message)


def missing_parameter(message):
    return ApiError(409, "MissingParameter", message)


def invalid_argument(message=""):
    return ApiError(409, "InvalidArgument", message)


def internal(message):
    return ApiError(500, "InternalError", message)


def invalid_content(message):
    """restify's bodyParser on a body that is not valid JSON."""
    return ApiError(400, "InvalidContent", message)


def method_not_allowed(method):
    return ApiError(405, "MethodNotAllowed", f"{method} is not allowed")


def no_route(path):
    return ApiError(404, "ResourceNotFound", f"{path} does not exist")


# ---- SAPI (lib/server/errors.js) ------------------------------------------

def provision_failed(message):
    return ApiError(500, "ProvisionFailedError", message)


def reprovision_failed(message):
    return ApiError(500, "ReprovisionFailedError", message)


def destroy_failed(message):
    return ApiError(500, "DestroyFailedError", message)


def schema_validation(message):
    return ApiError(409, "SchemaValidationError", message)


# ---- VMAPI (lib/errors.js): ValidationFailed is 409 there ------------------

def vmapi_validation(message, errors):
    return ApiError(409, "ValidationFailed", message, errors=errors)


def unallocated_vm(message="Cannot perform this action on a VM that has not been allocated "
                           "to a server yet"):
    return ApiError(409, "UnallocatedVM", message)


def brand_not_supported(message):
    return ApiError(409, "BrandNotSupported", message)


# ---- IMGAPI (lib/errors.js): 422 for its own validation errors ---------------

def imgapi_validation(message, errors):
    return ApiError(422, "ValidationFailed", message, errors=errors)


def imgapi_invalid_parameter(message, errors):
    return ApiError(422, "InvalidParameter", message, errors=errors)


def image_files_immutable(uuid):
    return ApiError(422, "ImageFilesImmutable", f"cannot modify files on activated image {uuid}")


def image_already_activated(uuid):
    return ApiError(422, "ImageAlreadyActivated", f'image "{uuid}" is already activated')


def no_activation_no_file(uuid):
    return ApiError(422, "NoActivationNoFile", f'image "{uuid}" cannot be activated: it has no file')


def image_uuid_exists(uuid):
    return ApiError(409, "ImageUuidAlreadyExists", f'image uuid "{uuid}" already exists')


def operator_only():
    return ApiError(403, "OperatorOnly", "this endpoint may only be called by an operator")


def download_error(message):
    return ApiError(400, "Download", message)


def origin_does_not_exist(origin):
    return ApiError(422, "OriginDoesNotExist", f'origin image "{origin}" does not exist')


def origin_not_active(origin):
    return ApiError(422, "OriginIsNotActive", f'origin image "{origin}" is not active')


def remote_source(message):
    return ApiError(503, "RemoteSourceError", message)


def image_has_dependents(uuid, deps):
    return ApiError(422, "ImageHasDependentImages",
                    f'image "{uuid}" has {len(deps)} dependent incremental image(s): '
                    + ", ".join(deps))
