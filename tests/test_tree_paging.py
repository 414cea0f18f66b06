"""Pages of a listing too large to keep whole (issue 22, item 5: a page costs its own size, not the repo's): built by
skipping whole folders by their counts, they must equal the same slice of the full listing, in both modes."""

from __future__ import annotations

import random

from huggingface_hub import CommitOperationAdd, HfApi

from keephub.devserver import LocalServer
from keephub.storage import gitobjects
from keephub.storage.db import Database


def database_of(server: LocalServer) -> Database:
    return Database(server.env.get("KEEPHUB_DATABASE_URL") or f"sqlite:///{server.data_dir / 'keephub.db'}")


def test_a_page_built_by_skipping_folders_equals_the_slice_of_the_whole_listing(server: LocalServer, api: HfApi,
                                                                                 repo_id: str) -> None:
    paths = ["README.md", "z-last.txt", "a/b/c/deep.txt", "a/b/two.txt", "a/one.txt", "empty-ish/only.txt"]
    paths += [f"shard-{s}/sub-{s % 3}/f{i}.txt" for s in range(7) for i in range(s * 3)]
    paths += [f"flat/{i:03d}.bin" for i in range(40)]
    api.create_commit(repo_id, [CommitOperationAdd(p, p.encode()) for p in paths], commit_message="nested")
    commit = api.repo_info(repo_id).sha
    database = database_of(server)
    try:
        with database.read() as session:
            root = gitobjects.load(session, commit).tree.decode()
            flat = gitobjects.load_tree(session, root)
            folder = next(item.sha.decode() for item in flat.iteritems() if item.path == b"shard-6")
            for tree, prefix in ((root, ""), (folder, "shard-6")):
                for recursive in (True, False):
                    whole = gitobjects.list_entries(session, tree, prefix, recursive)
                    if recursive:
                        assert gitobjects.count_entries(session, tree) == len(whole)
                    starts = sorted({0, 1, 5, len(whole) - 1, len(whole), *random.Random(7).sample(range(len(whole)),
                                                                                                min(8, len(whole)))})
                    for start in starts:
                        for size in (1, 3, 10, 1000):
                            page = gitobjects.page_of_entries(session, tree, prefix, recursive, start, size)
                            assert page == whole[start : start + size], (prefix, recursive, start, size)
    finally:
        database.engine.dispose()
