from threadline.activities.thread_store import ThreadStore
from threadline.channels.delivery import new_thread_name, new_turn_id, submit_turn
from threadline.models.thread import Turn


async def test_turn_replies_and_persists(temporal_client, agent_spec, agent_worker):
    await agent_worker(agent_spec)
    thread_id = agent_spec.ref.thread_id(new_thread_name())
    reply = await submit_turn(temporal_client, agent_spec.ref, thread_id, Turn(turn_id=new_turn_id(), text="hi"))
    assert reply.status == "completed"
    assert reply.text == "echo: hi"
    items = ThreadStore.for_room(agent_spec.room).items(thread_id)
    assert [(i.type, i.text) for i in items] == [("user", "hi"), ("assistant", "echo: hi")]
