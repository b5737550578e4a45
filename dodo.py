"""swstack's doit tasks: definitions only. Every task lives in swstack.tasks.

    doit list                       the tasks, with one-line help
    doit channel                    build the offline conda channel
    doit lock stack=py3 [check=1]   lock a stack (check=1: fail if the lockfile is stale)
    doit build stack=py3 [variant=dev]
    doit -c ci [stack=py3]          the nightly job: lock check, build, test, image, push, publish, summary
                                    (-c: a stack that fails does not stop the others; the summary lists it)
"""

from swstack.tasks import (  # noqa: F401
    Reporter,
    task_build,
    task_channel,
    task_ci,
    task_demo,
    task_image,
    task_images,
    task_keygen,
    task_lock,
    task_publish,
    task_push,
    task_sign,
)

DOIT_CONFIG = {
    "default_tasks": [],
    "verbosity": 2,
    "action_string_formatting": "new",
    "reporter": Reporter,  # doit's console reporter; a task printing JSON keeps stdout to itself
}
