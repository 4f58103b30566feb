"""The sandbox every worker and replayer runs workflows in.

phonenumbers and holidays load their data lazily (behind a threading.Lock, by importing a module
per region) the first time a region is used; inside the sandbox that import would re-run the
library under restrictions and fail the workflow task. Their data is static, so passing them
through is deterministic; so is the pure `dunning` domain package.
"""

from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

PASSTHROUGH = ("phonenumbers", "holidays", "dunning")


def workflow_runner() -> SandboxedWorkflowRunner:
    return SandboxedWorkflowRunner(restrictions=SandboxRestrictions.default.with_passthrough_modules(*PASSTHROUGH))
