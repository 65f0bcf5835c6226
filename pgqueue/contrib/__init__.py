"""Framework integrations, each behind an optional extra.

- :mod:`pgqueue.contrib.django` (``pip install pgqueue-jobs[django]``): Django app with
  migrations, ``manage.py pgqueue_worker``, a read-only admin, and a ``django.tasks``
  backend (:mod:`pgqueue.contrib.django.backend`).
- :mod:`pgqueue.contrib.sqlalchemy` (``pip install pgqueue-jobs[sqlalchemy]``): enqueue on a
  ``Session``/``Connection``/``AsyncSession``/``AsyncConnection``; an Alembic helper.

Nothing here is imported by ``import pgqueue``.
"""
