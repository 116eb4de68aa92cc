"""Tasks for tests/integration/test_replace.py: tasks that replace themselves (``Task.replace``)
or widen their chord (``Task.add_to_chord``), modelled on Celery's own integration tasks."""

from __future__ import annotations

from celeriac import Celery, chain, chord, group

app = Celery("tests.integration.replace_tasks")


@app.task
def add(x, y):
    return x + y


@app.task
def identity(value):
    return value


@app.task
def tsum(values):
    return sum(values)


@app.task
def collect(values):
    """What a chord body was given, so tests see the order and the nesting."""
    return values


@app.task
def fail(*args):
    raise ValueError(f"failed with {args!r}")


@app.task
def record(value, path):
    """An old-style callback or errback: writes what it got first (a result, a task id)."""
    with open(path, "a") as fh:
        fh.write(f"{value}\n")
    return value


@app.task(bind=True)
def lineage(self, *previous):
    r = self.request
    return {"id": r.id, "root_id": r.root_id, "parent_id": r.parent_id, "group": r.group,
            "group_index": r.group_index, "nesting": r.replaced_task_nesting}


@app.task(bind=True)
def delivery(self):
    return self.request.delivery_info


# ---- replacing ---------------------------------------------------------------------------
@app.task(bind=True)
def add_replaced(self, x, y):
    return self.replace(add.s(x, y))


@app.task(bind=True)
def replace_with_chain(self, *args):
    return self.replace(chain(identity.s(*args), identity.s()))


@app.task(bind=True)
def add_to_all(self, nums, val):
    return self.replace(group(add.s(num, val) for num in nums))


@app.task(bind=True)
def replace_with_chord(self, nums):
    return self.replace(chord([add.s(num, 1) for num in nums], tsum.s()))


@app.task(bind=True)
def replace_with_chain_ending_in_group(self):
    return self.replace(chain(add.s(1, 2), group(add.s(1), add.s(1))))


@app.task(bind=True)
def replace_with_lineage(self, *previous):
    return self.replace(lineage.s())


@app.task(bind=True)
def fail_replaced(self, *args):
    return self.replace(fail.si(*args))


@app.task(bind=True)
def replace_with_empty_chain(self, *previous):
    return self.replace(chain())


@app.task(bind=True)
def record_nesting(self, replacements, nesting=None):
    nesting = [*(nesting or []), self.request.replaced_task_nesting]
    if replacements:
        return self.replace(record_nesting.s(replacements - 1, nesting))
    return nesting


# ---- add_to_chord ------------------------------------------------------------------------
@app.task(bind=True)
def add_to_all_to_chord(self, nums, val):
    for num in nums:
        self.add_to_chord(add.s(num, val))
    return 0


@app.task(bind=True)
def add_chord_to_chord(self, nums, val):
    self.add_to_chord(group(add.s(num, val) for num in nums) | tsum.s())
    return 0


@app.task(bind=True)
def add_to_chord_outside_a_chord(self):
    return self.add_to_chord(add.s(1, 1))
