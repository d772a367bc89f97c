from __future__ import annotations

from typing import Any, Generic, TypeVar

import pytest
from pydantic import BaseModel

from unified_jobs import Config, Jobs, Worker
from unified_jobs.errors import DuplicateWorkerError, WorkerDefinitionError


class A(BaseModel):
    x: int


def make_jobs() -> Jobs:
    return Jobs(Config.from_dict({"workers": {"mode": "ForegroundBlocking"}}))


def test_defaults_come_from_the_class() -> None:
    class Report(Worker[A]):
        def perform(self, args: A) -> None: ...

    assert Report.args_model is A
    assert Report.queue == "default"
    assert Report.tags == ()
    assert Report.name == f"{__name__}.test_defaults_come_from_the_class.<locals>.Report"


def test_attributes_can_be_set() -> None:
    class Report(Worker[A]):
        name = "reports.Report"
        queue = "reports"
        tags = ["a", "b"]  # type: ignore[assignment]  # a list is accepted and frozen to a tuple

        def perform(self, args: A) -> None: ...

    assert (Report.name, Report.queue, Report.tags) == ("reports.Report", "reports", ("a", "b"))


def test_a_non_model_parameter_is_refused_at_class_definition() -> None:
    with pytest.raises(
        WorkerDefinitionError, match=r"(?s)needs a pydantic model.*class Bad\(Worker\[MyArgs\]\)"
    ):

        class Bad(Worker[int]):  # type: ignore[type-var]
            def perform(self, args: int) -> None: ...


def test_tags_as_a_bare_string_is_refused() -> None:
    with pytest.raises(WorkerDefinitionError, match=r"tags = \('email',\)"):

        class Bad(Worker[A]):
            tags = "email"  # type: ignore[assignment]

            def perform(self, args: A) -> None: ...


def test_a_missing_parameter_is_refused_at_registration() -> None:
    class NoArgs(Worker):  # type: ignore[type-arg]
        def perform(self, args: Any) -> None: ...

    with pytest.raises(WorkerDefinitionError, match=r"(?s)no arguments model.*Worker\[MyArgs\]"):
        make_jobs().register(NoArgs)


def test_a_missing_perform_is_refused_at_registration() -> None:
    class Lazy(Worker[A]):
        pass

    with pytest.raises(WorkerDefinitionError, match="does not implement perform"):
        make_jobs().register(Lazy)


T = TypeVar("T", bound=BaseModel)


def test_generic_intermediate_classes_and_subclasses_inherit_the_model() -> None:
    class Base(Worker[T], Generic[T]):
        queue = "base"

    class Concrete(Base[A]):
        def perform(self, args: A) -> None: ...

    class Child(Concrete):
        pass

    assert Concrete.args_model is A and Child.args_model is A
    assert Child.queue == "base"
    jobs = make_jobs()
    jobs.register(Concrete)
    jobs.register(Child)
    assert set(jobs.workers) == {Concrete.name, Child.name}


def test_two_workers_under_one_name_is_an_error_but_re_registering_one_is_not() -> None:
    class First(Worker[A]):
        name = "same"

        def perform(self, args: A) -> None: ...

    class Second(Worker[A]):
        name = "same"

        def perform(self, args: A) -> None: ...

    jobs = make_jobs()
    assert jobs.register(First) is First
    jobs.register(First)
    with pytest.raises(DuplicateWorkerError, match=r"two workers are named 'same'.*name ="):
        jobs.register(Second)
    assert jobs.workers["same"] is First


def test_register_works_as_a_decorator_and_refuses_non_workers() -> None:
    jobs = make_jobs()

    @jobs.register
    class Decorated(Worker[A]):
        def perform(self, args: A) -> None: ...

    assert jobs.worker(Decorated.name) is Decorated
    with pytest.raises(TypeError, match="takes a Worker subclass"):
        jobs.register(A)  # type: ignore[type-var]


def test_each_job_gets_a_fresh_instance_with_the_context_and_job_id() -> None:
    seen: list[tuple[int, Any, str | None]] = []

    class Probe(Worker[A]):
        def perform(self, args: A) -> None:
            seen.append((id(self), self.ctx, self.job_id))

    jobs = Jobs(Config.from_dict({"workers": {"mode": "ForegroundBlocking"}}), context={"db": "pool"})
    jobs.register(Probe)
    h1 = Probe.perform_later({"x": 1})
    h2 = Probe.perform_later({"x": 2})
    assert [s[1] for s in seen] == [{"db": "pool"}, {"db": "pool"}]
    assert [s[2] for s in seen] == [h1.id, h2.id]
