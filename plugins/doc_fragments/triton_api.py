# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""Shared option documentation for the SAPI, IMGAPI and VMAPI modules.

Use as ``manta.ops.triton_api`` (common options) plus one or more of
``manta.ops.triton_api.sapi``, ``manta.ops.triton_api.imgapi`` and
``manta.ops.triton_api.vmapi`` (the service URLs). The matching
argument_spec comes from
``plugins/module_utils/http_api.py:triton_argument_spec()``.
"""
from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  api_token:
    description:
      - Bearer token sent as C(Authorization) header to every API.
      - The admin-network SAPI, IMGAPI and VMAPI do not need one; set it when a
        proxy in front of them does.
      - If not set, the environment variable E(MANTA_API_TOKEN) is used.
      - Never shown in output.
    type: str
  validate_certs:
    description:
      - Verify HTTPS certificates. Only set V(false) against a lab with
        self-signed certificates.
    type: bool
    default: true
  ca_path:
    description:
      - A PEM file (or directory) of CA certificates used to verify HTTPS
        endpoints, instead of the system bundle.
    type: path
  api_timeout:
    description:
      - Seconds to wait for a connection and for each answer of a normal API
        call. Long operations (provisioning, reprovisioning, uploads) use
        their own timeout option where the module has one
        (C(wait_timeout), C(transfer_timeout)).
    type: float
    default: 30
  api_retries:
    description:
      - How often an idempotent call (GET, PUT, DELETE) is retried after a
        connection error, a timeout or HTTP 503, with exponential back-off
        starting at 0.5 s. Non-idempotent calls are never retried.
    type: int
    default: 3
notes:
  - Errors from the APIs are reported with the HTTP status, the restify
    C(code) and C(message) of the answer and its C(x-request-id), and are also
    returned as C(api_status), C(api_code),
    C(api_message) and C(request_id).
"""

    SAPI = r"""
options:
  sapi_url:
    description:
      - Base URL of SAPI, for example V(http://sapi.us-east-1.example.com).
      - If not set, the environment variable E(MANTA_SAPI_URL) is used (an AWX
        credential type can inject it). One of the two is required.
    type: str
"""

    IMGAPI = r"""
options:
  imgapi_url:
    description:
      - Base URL of IMGAPI, for example V(http://imgapi.us-east-1.example.com).
      - If not set, the environment variable E(MANTA_IMGAPI_URL) is used. One of
        the two is required.
    type: str
"""

    VMAPI = r"""
options:
  vmapi_url:
    description:
      - Base URL of VMAPI, for example V(http://vmapi.us-east-1.example.com).
      - If not set, the environment variable E(MANTA_VMAPI_URL) is used.
    type: str
"""
