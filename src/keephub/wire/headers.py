"""Header names of the Hugging Face wire contract, in one place."""

X_ERROR_CODE = "X-Error-Code"
X_ERROR_MESSAGE = "X-Error-Message"
X_REQUEST_ID = "X-Request-Id"
X_REPO_COMMIT = "X-Repo-Commit"
X_LINKED_ETAG = "X-Linked-Etag"
X_LINKED_SIZE = "X-Linked-Size"
