"""Models: every name a caller may use — base models, their organization's fine-tunes and checkpoints.

Name resolution lives here, once, for the models API and for inference: a model of another
organization, a deleted or unfinished fine-tune and a name nobody made are all the same 404
`model_not_found`, so the API never reveals what other tenants have. `org_id=None` (admin keys, the
`openft export` command) sees every organization's models.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from openft.basemodels import BaseModelUnavailable, ModelCatalog
from openft.db import aliases as aliases_db
from openft.db import checkpoint_permissions as permissions_db
from openft.db import repositories as repo
from openft.db.engine import read_only_sessions
from openft.db.tables import CheckpointRow, JobRow
from openft.domain.job_states import JobStatus
from openft.errors import InvalidRequest, ModelNotFound, PermissionDenied
from openft.fsutil import remove_tree
from openft.inference import ModelTarget
from openft.inference.backends import ServingEngine
from openft.protocol.common import DeletedObject
from openft.protocol.models import Model, ModelList, alias_fields, azure_fields
from openft.services import model_cache
from openft.services.auth import Principal
from openft.storage import FolderMirror

log = logging.getLogger(__name__)
BASE_OWNER = "system"
"""`owned_by` of base models (OpenAI uses "system" / "openai"); fine-tunes are owned by their organization."""


@dataclass(frozen=True)
class Caller:
    """Who asks for a model by name. `scope`: the organization whose models it sees (None: every one, admin
    keys and the `openft export` command); `org_id`: the organization whose aliases apply (admin keys have
    one too); `project`: the key's project, to which other organizations may share checkpoints."""

    scope: str | None
    org_id: str | None = None
    project: str | None = None

    @classmethod
    def of(cls, who: Caller | str | None) -> Caller:
        """A bare organization id (or None) is a caller of that scope whose aliases are that organization's."""
        return who if isinstance(who, Caller) else cls(scope=who, org_id=who)

    @classmethod
    def of_principal(cls, principal: Principal) -> Caller:
        return cls(scope=principal.scope, org_id=principal.org_id, project=principal.project)

    def project_id(self, session: Session) -> str | None:
        """The project as checkpoint permissions name it: `<organization name>/<project>` (project names are
        only unique within an organization)."""
        if self.project is None or self.org_id is None:
            return None
        org = repo.get_organization(session, self.org_id)
        return None if org is None else project_id(org.name, self.project)


def project_id(org_name: str, project: str) -> str:
    return f"{org_name}/{project}"


@dataclass(frozen=True)
class ResolvedModel:
    name: str
    base_name: str
    job_id: str | None  # None for a base model
    weights: Path | None  # adapter or full-model folder; None for a base model
    created: int
    owner: str
    alias_for: str | None = None  # the real name when `name` is an alias


def weights_target(base_path: Path, weights: Path) -> ModelTarget:
    """A PEFT adapter folder rides on the base; a full model folder replaces it.

    An adapter trained on top of a fully fine-tuned parent (continued fine-tuning) names that parent's
    folder in its `adapter_config.json`; it must ride on those weights, not on the original base.
    """
    config = weights / "adapter_config.json"
    if config.exists():
        trained_on = Path(str(json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path") or ""))
        if trained_on.is_absolute() and (trained_on / "config.json").is_file() and trained_on != base_path:
            return ModelTarget(base_path=base_path, full_model_path=trained_on, adapter_path=weights)
        return ModelTarget(base_path=base_path, adapter_path=weights)
    return ModelTarget(base_path=base_path, full_model_path=weights)


def _find_checkpoint(session: Session, name: str) -> CheckpointRow | None:
    """By its model name (`ft:…:ckpt-step-N`) or its id (`ftckpt-…`): both name a checkpoint to clients."""
    if name.startswith("ftckpt-"):
        return session.scalar(select(CheckpointRow).where(CheckpointRow.id == name))
    return repo.find_checkpoint_by_model_name(session, name)


def _checkpoint_weights(row: CheckpointRow) -> Path | None:
    return _checkpoint_weights_in(Path(row.path))


def _checkpoint_weights_in(folder: Path) -> Path | None:
    return next((folder / sub for sub in ("adapter", "model") if (folder / sub).is_dir()), None)


class ModelService:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        catalog: ModelCatalog,
        engine: ServingEngine,
        job_folders: FolderMirror | None = None,
        forget_checkpoints: Callable[[str], None] = lambda _job_id: None,
        model_cache_bytes: int = 20 * 1024**3,
    ):
        """`job_folders`: where succeeded jobs' artefacts are mirrored with an object store (None: nowhere);
        `forget_checkpoints(job_id)` deletes the job's stored run checkpoints (services/checkpoint_mirror.py)."""
        self._job_folders = job_folders
        self._forget_checkpoints = forget_checkpoints
        self._model_cache_bytes = model_cache_bytes
        self._restore_lock = threading.Lock()
        self._sessions = sessions
        self._reads = read_only_sessions(sessions)  # resolve/list (every chat request) never take SQLite's write lock
        self._catalog = catalog
        self._engine = engine

    # resolution -------------------------------------------------------------------------------
    def resolve(self, who: Caller | str | None, name: str, *, aliases: bool = True) -> ResolvedModel:
        """The model `name` means to this caller: a base model, a fine-tuned model or checkpoint it may use
        (`ft:…`, `ft:…:ckpt-step-N` or the checkpoint's `ftckpt-…` id), else (unless `aliases=False`) one of
        its organization's aliases, whose target is one of those: aliases never name aliases, so there is no
        chain to follow, and a real name always wins over an alias."""
        caller = Caller.of(who)
        resolved = self._resolve_real(caller, name)
        if resolved is not None:
            return resolved
        if aliases and caller.org_id is not None:
            with self._reads.begin() as session:
                alias = aliases_db.get_alias(session, caller.org_id, name)
            if alias is not None:
                target = self._resolve_real(caller, alias.target)
                if target is not None:
                    return replace(target, name=name, **alias_fields(alias.target))
        raise ModelNotFound(f"The model '{name}' does not exist or you do not have access to it.", param="model")

    def _resolve_real(self, caller: Caller, name: str) -> ResolvedModel | None:
        info = self._catalog.get(name)
        if info is not None:
            return ResolvedModel(name, name, None, None, info.created, BASE_OWNER)
        checkpoint_of: tuple[str, str, str, Path, int] | None = None  # (job id, base, org, folder, created)
        with self._reads.begin() as session:
            job = repo.find_job_by_model_name(session, name)
            if job is not None and _servable(job, caller.scope) and job.model_path:
                resolved = ResolvedModel(
                    name,
                    job.base,
                    job.id,
                    Path(job.model_path),
                    job.finished_at or job.created_at,
                    job.organization_id,
                )
            else:
                resolved = None
                checkpoint = _find_checkpoint(session, name)
                owner = repo.get_job(session, None, checkpoint.job_id) if checkpoint is not None else None
                if (
                    checkpoint is not None
                    and owner is not None
                    and owner.model_deleted_at is None
                    and self._may_use_checkpoint(session, caller, checkpoint, owner)
                ):
                    folder, created = Path(checkpoint.path), checkpoint.created_at
                    checkpoint_of = (owner.id, owner.base, owner.organization_id, folder, created)
        # a download from the object store, if any, runs with no database transaction open
        if resolved is not None and resolved.weights is not None:
            self._restore_job_folder(str(resolved.job_id), resolved.weights.parent, resolved.weights)
            return resolved
        if checkpoint_of is not None:
            job_id, base, org, folder, created = checkpoint_of
            self._restore_job_folder(job_id, folder.parent.parent, folder)
            weights = _checkpoint_weights_in(folder)
            if weights is not None:
                return ResolvedModel(name, base, job_id, weights, created, org)
        return None

    @staticmethod
    def _may_use_checkpoint(session: Session, caller: Caller, checkpoint: CheckpointRow, owner: JobRow) -> bool:
        """Its own organization's checkpoint (every one for admin keys), or one shared with the caller's
        project (services/checkpoint_permissions.py)."""
        if caller.scope is None or owner.organization_id == caller.scope:
            return True
        project_id = caller.project_id(session)
        return project_id is not None and permissions_db.is_shared_with(session, checkpoint.id, project_id)

    def _restore_job_folder(self, job_id: str, job_folder: Path, needed: Path) -> None:
        """With an object store, the job folder is a cache of the job's stored artefacts: when `needed` (its
        model or a checkpoint folder) is missing here — another machine, a lost disk — fill the folder in from
        the store (storage/folders.py `restore_missing`; what the folder holds is kept). Nothing stored, or
        no store: the caller finds the folder missing as before."""
        if self._job_folders is None or job_folder.name != job_id:
            return
        if needed.exists():
            model_cache.mark_used(job_folder)  # a restored folder's last use (services/model_cache.py)
            return
        with self._restore_lock:  # one download per folder, however many requests ask at once
            if needed.exists():
                return
            try:
                restored = self._job_folders.restore_missing(job_id, job_folder)
            except FileNotFoundError:
                return
            log.info("restored %s of job %s from the object store", ", ".join(restored) or "nothing", job_id)
            model_cache.mark_used(job_folder, create=True)  # a cache entry from now on, within the disk bound
            model_cache.evict(job_folder.parent, self._model_cache_bytes)

    def target(self, who: Caller | str | None, name: str) -> ModelTarget:
        """The folders that answer for `name` (the base is materialized on first use, e.g. SmolLM2's GGUF).

        Never downloads: an allowed hub model that is not in the cache yet is a 404 `model_not_found`
        until a fine-tuning job on it (or the operator) has downloaded it, so a chat request cannot make
        the server fetch gigabytes from the hub.
        """
        resolved = self.resolve(who, name)
        info = self._catalog.get(resolved.base_name)
        if info is None:
            raise ModelNotFound(
                f"The model '{name}' needs the base model '{resolved.base_name}', which is no longer available.",
                param="model",
            )
        if info.source == "hub" and info.path is None:
            raise ModelNotFound(
                f"The model '{resolved.base_name}' is not downloaded on this server yet: fine-tune it (the job "
                "downloads it) or ask the operator to download it beforehand.",
                param="model",
            )
        try:
            base_path = self._catalog.materialize(info)
        except BaseModelUnavailable as exc:
            raise ModelNotFound(f"The model '{name}' cannot be loaded on this server: {exc}", param="model") from exc
        return (
            ModelTarget(base_path=base_path)
            if resolved.weights is None
            else weights_target(base_path, resolved.weights)
        )

    # models API -------------------------------------------------------------------------------
    def list(self, who: Caller | str | None, *, azure: bool = False) -> ModelList:
        """Base models, the caller's fine-tunes and their checkpoints, checkpoints other organizations shared
        with its project, then its organization's aliases (`alias_for` names each one's target)."""
        caller = Caller.of(who)
        models = [
            self._wire(ResolvedModel(i.name, i.name, None, None, i.created, BASE_OWNER), azure)
            for i in self._catalog.list()
        ]
        with self._reads.begin() as session:
            stmt = select(JobRow).where(JobRow.status == JobStatus.SUCCEEDED.value, JobRow.model_deleted_at.is_(None))
            if caller.scope is not None:
                stmt = stmt.where(JobRow.organization_id == caller.scope)
            for job in session.scalars(stmt.order_by(JobRow.seq)).all():
                assert job.fine_tuned_model is not None
                created = job.finished_at or job.created_at
                models.append(
                    self._wire(
                        ResolvedModel(job.fine_tuned_model, job.base, job.id, None, created, job.organization_id), azure
                    )
                )
                models += [
                    self._wire(_checkpoint_model(checkpoint, job), azure)
                    for checkpoint in repo.list_checkpoints(session, job.id, after=None, limit=1000).data
                ]
            project = caller.project_id(session) if caller.scope is not None else None
            shared = permissions_db.shared_with(session, project) if project is not None else set()
            for checkpoint in session.scalars(select(CheckpointRow).where(CheckpointRow.id.in_(shared))).all():
                owner = repo.get_job(session, None, checkpoint.job_id)
                if owner is not None and owner.model_deleted_at is None and owner.organization_id != caller.scope:
                    models.append(self._wire(_checkpoint_model(checkpoint, owner), azure))
            if caller.org_id is not None:
                models += [
                    Model(
                        id=alias.name,
                        created=alias.updated_at,
                        owned_by=alias.organization_id,
                        **alias_fields(alias.target),
                    )
                    for alias in aliases_db.list_aliases(session, caller.org_id)
                ]
        return ModelList(data=models)

    def get(self, who: Caller | str | None, name: str, *, azure: bool = False) -> Model:
        return self._wire(self.resolve(who, name), azure)

    @staticmethod
    def _wire(model: ResolvedModel, azure: bool) -> Model:
        wire = Model(id=model.name, created=model.created, owned_by=model.owner)
        if azure:
            base = None if model.job_id is None else model.base_name
            wire = Model(**wire.model_dump(), **azure_fields(wire, base=base, job_id=model.job_id))
        if model.alias_for is not None:
            wire = Model(**wire.model_dump(), **alias_fields(model.alias_for))
        return wire

    def delete(self, who: Caller | str | None, name: str) -> DeletedObject:
        """Delete a fine-tuned model: gone from listings and inference, its weights and checkpoints removed
        from disk; the job keeps its record (status, metrics, result file)."""
        caller = Caller.of(who)
        resolved = self.resolve(caller, name)
        if resolved.alias_for is not None:
            raise InvalidRequest(
                f"'{name}' is an alias of '{resolved.alias_for}'; delete the alias (`openft aliases delete`) or "
                "the model by its own name.",
                param="model",
            )
        if resolved.job_id is None:
            raise PermissionDenied(f"'{name}' is a base model; only fine-tuned models can be deleted.", param="model")
        with self._sessions.begin() as session:
            job = repo.get_job(session, caller.scope, resolved.job_id)
            if job is None:  # a checkpoint another organization shared: usable, not the caller's to delete
                raise PermissionDenied(f"'{name}' belongs to another organization.", param="model")
            if job.fine_tuned_model != name:
                raise InvalidRequest(
                    f"'{name}' is a checkpoint; checkpoints are deleted with their fine-tuned model "
                    f"'{job.fine_tuned_model}'.",
                    param="model",
                )
            checkpoints = repo.list_checkpoints(session, job.id, after=None, limit=1000).data
            # (weights folder the engine may have loaded, folder to remove from disk)
            doomed = [(Path(job.model_path), Path(job.model_path))] if job.model_path else []
            doomed += [(_checkpoint_weights(c) or Path(c.path), Path(c.path)) for c in checkpoints]
            for checkpoint in checkpoints:
                repo.delete_checkpoint_for_step(session, job.id, checkpoint.step_number)
            repo.update_job_fenced(session, job.id, job.attempt, model_deleted_at=int(time.time()))
            repo.add_event(session, job.id, f"Fine-tuned model deleted: {name}")
        for weights, folder in doomed:
            self._engine.unload(weights)
            remove_tree(folder)
        if self._job_folders is not None:  # the object store's copy of the weights goes too
            self._job_folders.delete(job.id)
        self._forget_checkpoints(job.id)  # and the checkpoints of its run, which hold weights as well
        return DeletedObject(id=name, object="model")


def _checkpoint_model(checkpoint: CheckpointRow, job: JobRow) -> ResolvedModel:
    name = checkpoint.fine_tuned_model_checkpoint
    return ResolvedModel(name, job.base, job.id, None, checkpoint.created_at, job.organization_id)


def _servable(job: JobRow, org_id: str | None) -> bool:
    return (
        (org_id is None or job.organization_id == org_id)
        and job.status == JobStatus.SUCCEEDED
        and job.model_deleted_at is None
    )
