"""Example: a SQLAlchemy session saves an order and enqueues its receipt in one
transaction; a worker runs the job.

    python examples/sqlalchemy_app.py
    PGQUEUE_DSN="host=127.0.0.1 dbname=shop user=me" python examples/sqlalchemy_app.py

The database is found as everywhere in pgqueue: ``$PGQUEUE_DSN``, else libpq's
environment (``PGHOST``, ...), else the embedded PostgreSQL.

The schema is installed here with ``app.migrate()``; in a real project use Alembic
(``pgqueue.contrib.sqlalchemy.upgrade(op)`` in a revision).
"""

from __future__ import annotations

import os
import threading

from sqlalchemy import Boolean, Integer, String, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import pgqueue

DSN = os.environ.get("PGQUEUE_DSN") or None
app = pgqueue.App(DSN)


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "example_orders"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item: Mapped[str] = mapped_column(String(100))
    quantity: Mapped[int] = mapped_column(Integer)
    receipt_sent: Mapped[bool] = mapped_column(Boolean, default=False)


@app.task(name="examples.send_receipt", max_attempts=3)
def send_receipt(order_id: int) -> str:
    with app.connection() as conn:
        conn.execute("update example_orders set receipt_sent = true where id = %s", (order_id,))
    return f"receipt sent for order {order_id}"


def place_order(session: Session, item: str, quantity: int) -> pgqueue.Job:
    """Save the order and enqueue its receipt; both commit or neither does."""
    with session.begin():
        order = Order(item=item, quantity=quantity)
        session.add(order)
        session.flush()                      # assigns order.id
        job = send_receipt.using(connection=session).enqueue(order.id)
        if quantity < 1:
            raise ValueError("quantity must be at least 1")
    return job


def main() -> None:
    app.migrate()
    import psycopg
    engine = create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(app.conninfo))
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        job = place_order(session, "tea", 2)
        try:
            place_order(session, "nothing", 0)
        except ValueError as e:
            print(f"refused: {e} (no order, no job)")

    worker = pgqueue.Worker(app, concurrency=2, poll_interval=0.5)
    t = threading.Thread(target=worker.run, kwargs={"install_signal_handlers": False})
    t.start()
    try:
        print(f"job {job.id}: {job.result(timeout=30)}")
    finally:
        worker.stop()
        t.join(30)
    with Session(engine) as session:
        for order in session.scalars(select(Order).order_by(Order.id)):
            print(f"order {order.id}: {order.quantity} x {order.item}, "
                  f"receipt_sent={order.receipt_sent}")
    engine.dispose()
    app.close()


if __name__ == "__main__":
    main()
