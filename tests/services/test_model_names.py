"""Model names beyond the real ones: aliases (services/aliases.py), checkpoint ids, and checkpoints shared with
other organizations' projects (services/checkpoint_permissions.py), as name resolution sees them."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from openft.db import aliases as aliases_db
from openft.db.tables import CheckpointPermissionRow, JobRow
from openft.errors import InvalidRequest, ModelNotFound, NotFound, PermissionDenied
from openft.protocol.checkpoint_permissions import CheckpointPermissionCreate
from openft.protocol.fine_tuning import FineTuningJobCreate
from openft.services.aliases import AliasService
from openft.services.auth import ensure_organization
from openft.services.container import Container
from openft.services.models import Caller
from tests.conftest import TINY_MODEL_NAME
from tests.services.test_tenancy import _succeed, _upload


@pytest.fixture
def two_orgs(container: Container, tmp_path: Path) -> dict[str, str]:
    """Team A with a succeeded fine-tune (and one checkpoint, `ftckpt-tenancy`); team B with nothing."""
    org_a = ensure_organization(container.sessions, "team-a").id
    org_b = ensure_organization(container.sessions, "team-b").id
    file_a = _upload(container, org_a, None)
    params = FineTuningJobCreate.model_validate({"model": TINY_MODEL_NAME, "training_file": file_a, "suffix": "s"})
    job = container.fine_tuning.create(org_a, params)
    model, checkpoint = _succeed(container, job.id, tmp_path / "weights")
    return {
        "a": org_a,
        "b": org_b,
        "file_a": file_a,
        "file_b": _upload(container, org_b, "research"),
        "job": job.id,
        "model": model,
        "checkpoint": checkpoint,
    }


def test_aliases_answer_for_their_organization_only(container: Container, two_orgs: dict[str, str]) -> None:
    aliases = AliasService(container.sessions, container.models)
    a, b, model, checkpoint = two_orgs["a"], two_orgs["b"], two_orgs["model"], two_orgs["checkpoint"]
    aliases.set("team-a", "gpt-4o-mini-2024-07-18", TINY_MODEL_NAME)
    aliases.set("team-a", "ft:gpt-4o-mini:acme:support:abc123", model)
    aliases.set("team-a", "support-deployment", "ftckpt-tenancy")  # a checkpoint's id is a model name too

    assert container.models.resolve(a, "gpt-4o-mini-2024-07-18").base_name == TINY_MODEL_NAME
    resolved = container.models.resolve(a, "ft:gpt-4o-mini:acme:support:abc123")
    assert (resolved.job_id, resolved.alias_for) == (two_orgs["job"], model)
    assert container.models.target(a, "support-deployment") == container.models.target(a, checkpoint)
    assert container.models.resolve(a, "ftckpt-tenancy").name == "ftckpt-tenancy"
    # an admin key of team A (scope: every organization) uses team A's aliases
    assert container.models.resolve(Caller(None, a), "gpt-4o-mini-2024-07-18").base_name == TINY_MODEL_NAME
    for name in ("gpt-4o-mini-2024-07-18", "ft:gpt-4o-mini:acme:support:abc123", "ftckpt-tenancy"):
        with pytest.raises(ModelNotFound):
            container.models.resolve(b, name)

    listed = {m.id: m.model_dump() for m in container.models.list(a).data}
    assert listed["ft:gpt-4o-mini:acme:support:abc123"]["alias_for"] == model
    assert "alias_for" not in listed[model]
    assert "gpt-4o-mini-2024-07-18" not in {m.id for m in container.models.list(b).data}
    assert container.models.get(a, "support-deployment").model_dump()["alias_for"] == "ftckpt-tenancy"

    # a new job may name an alias: of a base (plain fine-tuning) or of a fine-tune (continued fine-tuning)
    on_base = container.fine_tuning.create(
        a, FineTuningJobCreate.model_validate({"model": "gpt-4o-mini-2024-07-18", "training_file": two_orgs["file_a"]})
    )
    continued = container.fine_tuning.create(
        a,
        FineTuningJobCreate.model_validate(
            {"model": "ft:gpt-4o-mini:acme:support:abc123", "training_file": two_orgs["file_a"]}
        ),
    )
    with container.sessions.begin() as session:
        rows = {r.id: r for r in session.scalars(select(JobRow).where(JobRow.id.in_([on_base.id, continued.id])))}
        assert (rows[on_base.id].base_model, rows[on_base.id].parent_weights) == (TINY_MODEL_NAME, None)
        assert rows[continued.id].base_model == TINY_MODEL_NAME
        assert rows[continued.id].parent_weights is not None
        assert rows[continued.id].model == "ft:gpt-4o-mini:acme:support:abc123"

    # a model cannot be deleted by an alias; re-pointing and deleting aliases take effect at once
    with pytest.raises(InvalidRequest):
        container.models.delete(a, "ft:gpt-4o-mini:acme:support:abc123")
    aliases.set("team-a", "ft:gpt-4o-mini:acme:support:abc123", TINY_MODEL_NAME)
    assert container.models.resolve(a, "ft:gpt-4o-mini:acme:support:abc123").job_id is None
    aliases.delete("team-a", "ft:gpt-4o-mini:acme:support:abc123")
    with pytest.raises(ModelNotFound):
        container.models.resolve(a, "ft:gpt-4o-mini:acme:support:abc123")
    assert [(i.org, i.name) for i in aliases.list()] == [
        ("team-a", "gpt-4o-mini-2024-07-18"),
        ("team-a", "support-deployment"),
    ]


def test_alias_rules(container: Container, two_orgs: dict[str, str]) -> None:
    aliases = AliasService(container.sessions, container.models)
    aliases.set("team-a", "old", TINY_MODEL_NAME)
    cases = [
        (("team-a", TINY_MODEL_NAME, two_orgs["model"]), "name"),  # a real name always wins: never an alias
        (("team-a", "other", "old"), "target"),  # no chains
        (("team-a", "other", "no-such-model"), "target"),
        (("team-b", "other", two_orgs["model"]), "target"),  # another organization's model
        (("team-a", "has space", TINY_MODEL_NAME), "name"),
        (("team-a", "", TINY_MODEL_NAME), "name"),
        (("team-a", "x" * 257, TINY_MODEL_NAME), "name"),
    ]
    for (org, name, target), param in cases:
        with pytest.raises(InvalidRequest) as excinfo:
            aliases.set(org, name, target)
        assert excinfo.value.param == param, (name, target)
    with pytest.raises(NotFound):
        aliases.set("no-such-org", "x", TINY_MODEL_NAME)
    with pytest.raises(NotFound):
        aliases.delete("team-a", "never-made")


def test_an_imported_job_aliases_the_vendor_model_when_it_succeeds(
    container: Container, two_orgs: dict[str, str]
) -> None:
    with container.sessions.begin() as session:
        job = session.scalar(select(JobRow).where(JobRow.id == two_orgs["job"]))
        assert job is not None
        job.metadata_ = {aliases_db.IMPORTED_MODEL_KEY: "ft:gpt-4o-mini:acme:support:abc123"}
        session.flush()
        assert aliases_db.alias_imported_model(session, job.id) == "ft:gpt-4o-mini:acme:support:abc123"
    resolved = container.models.resolve(two_orgs["a"], "ft:gpt-4o-mini:acme:support:abc123")
    assert resolved.alias_for == two_orgs["model"]
    with pytest.raises(ModelNotFound):
        container.models.resolve(two_orgs["b"], "ft:gpt-4o-mini:acme:support:abc123")


def test_a_shared_checkpoint_serves_and_seeds_the_granted_project_only(
    container: Container, two_orgs: dict[str, str]
) -> None:
    a, b, checkpoint = two_orgs["a"], two_orgs["b"], two_orgs["checkpoint"]
    permissions = container.checkpoint_permissions
    research, other, keyless = Caller(b, b, "research"), Caller(b, b, "other"), Caller(b, b)
    with pytest.raises(ModelNotFound):
        container.models.resolve(research, checkpoint)

    granted = permissions.create(a, checkpoint, CheckpointPermissionCreate(project_ids=["team-b/research"]))
    assert [p.project_id for p in granted.data] == ["team-b/research"]
    again = permissions.create(a, "ftckpt-tenancy", CheckpointPermissionCreate(project_ids=["team-b/research"]))
    assert again.data[0].id == granted.data[0].id  # granting twice keeps the one permission
    assert container.models.target(research, checkpoint) == container.models.target(a, checkpoint)
    assert checkpoint in {m.id for m in container.models.list(research).data}
    for caller in (other, keyless):
        with pytest.raises(ModelNotFound):
            container.models.resolve(caller, checkpoint)
    with pytest.raises(PermissionDenied):  # usable, not B's to delete
        container.models.delete(research, checkpoint)
    # the granted project may fine-tune from it (continued fine-tuning from A's weights)
    params = FineTuningJobCreate.model_validate({"model": checkpoint, "training_file": two_orgs["file_b"]})
    job = container.fine_tuning.create(b, params, project="research")
    with container.sessions.begin() as session:
        assert session.scalar(select(JobRow.parent_weights).where(JobRow.id == job.id))
    with pytest.raises(InvalidRequest):
        container.fine_tuning.create(b, params, project="other")

    # only the owner sees and changes the permissions
    with pytest.raises(NotFound):
        permissions.list(b, checkpoint, project_id=None, after=None, limit=10, ascending=False)
    listed = permissions.list(a, checkpoint, project_id="team-b/research", after=None, limit=10, ascending=False)
    assert [p.id for p in listed.data] == [granted.data[0].id]
    with pytest.raises(NotFound):
        permissions.delete(b, checkpoint, granted.data[0].id)
    permissions.delete(a, checkpoint, granted.data[0].id)
    with pytest.raises(ModelNotFound):
        container.models.resolve(research, checkpoint)
    with pytest.raises(NotFound):
        permissions.delete(a, checkpoint, granted.data[0].id)

    # deleting the model takes its checkpoints' permissions with it
    permissions.create(a, checkpoint, CheckpointPermissionCreate(project_ids=["team-b/research"]))
    container.models.delete(a, two_orgs["model"])
    with container.sessions.begin() as session:
        assert session.scalars(select(CheckpointPermissionRow)).all() == []
    with pytest.raises(NotFound):
        permissions.list(a, checkpoint, project_id=None, after=None, limit=10, ascending=False)


def test_permission_pages_follow_order_and_cursor(container: Container, two_orgs: dict[str, str]) -> None:
    a, checkpoint = two_orgs["a"], two_orgs["checkpoint"]
    projects = [f"team-b/p{i}" for i in range(5)]
    for project in projects:
        container.checkpoint_permissions.create(a, checkpoint, CheckpointPermissionCreate(project_ids=[project]))
    first = container.checkpoint_permissions.list(a, checkpoint, project_id=None, after=None, limit=2, ascending=True)
    assert [p.project_id for p in first.data] == projects[:2] and first.has_more
    rest = container.checkpoint_permissions.list(
        a, checkpoint, project_id=None, after=first.last_id, limit=10, ascending=True
    )
    assert [p.project_id for p in rest.data] == projects[2:] and not rest.has_more
    newest = container.checkpoint_permissions.list(a, checkpoint, project_id=None, after=None, limit=1, ascending=False)
    assert [p.project_id for p in newest.data] == projects[-1:]


def test_the_data_check_takes_an_alias_or_a_fine_tune_as_its_model(
    container: Container, two_orgs: dict[str, str]
) -> None:
    """The check reads the data with the tokenizer of the base the named model stands on."""
    AliasService(container.sessions, container.models).set("team-a", "gpt-4o-mini-2024-07-18", TINY_MODEL_NAME)
    a, file_a = two_orgs["a"], two_orgs["file_a"]
    for model in ("gpt-4o-mini-2024-07-18", two_orgs["model"]):
        report = container.data_check.check(Caller(a, a), file_a, model=model, method=None)
        assert report["model"] == TINY_MODEL_NAME and report["ok"], model
    with pytest.raises(InvalidRequest) as excinfo:  # not team B's alias
        container.data_check.check(
            Caller(two_orgs["b"], two_orgs["b"]), two_orgs["file_b"], model="gpt-4o-mini-2024-07-18", method=None
        )
    assert excinfo.value.param == "model"
