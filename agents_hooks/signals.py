"""Signal receivers: thin, they only decide whether a change is an event and hand it to
`agents_hooks.events`. Connected in `AgentsHooksConfig.ready`."""

from django.db.models.signals import m2m_changed, post_delete, post_save
from django.dispatch import receiver

from deliveries.signals import callback_attempted

from . import events
from .models import Agent, AgentTool, Job, Message, Organization, Run, Step, ToolExecution


@receiver(post_save, sender=Step)
def step_saved(sender, instance: Step, raw=False, **kwargs):
    if not raw and instance.entered_terminal_state():
        events.step_finished(instance)


@receiver(post_save, sender=Run)
def run_saved(sender, instance: Run, raw=False, **kwargs):
    if not raw and instance.entered_terminal_state():
        events.run_finished(instance)


@receiver(post_save, sender=Job)
def job_saved(sender, instance: Job, raw=False, **kwargs):
    if not raw and instance.entered_terminal_state():
        events.job_finished(instance)


@receiver(post_save, sender=ToolExecution)
def tool_execution_saved(sender, instance: ToolExecution, raw=False, **kwargs):
    if not raw and instance.entered_terminal_state():
        events.tool_execution_finished(instance)


@receiver(post_save, sender=Message)
def message_saved(sender, instance: Message, created=False, raw=False, **kwargs):
    if created and not raw:
        events.message_sent(instance)


@receiver(post_save, sender=AgentTool)
def tool_attached(sender, instance: AgentTool, created=False, raw=False, **kwargs):
    if created and not raw:
        events.tool_attachment_changed(instance, attached=True)


@receiver(post_delete, sender=AgentTool)
def tool_detached(sender, instance: AgentTool, origin=None, **kwargs):
    # Deleting the agent (or its organization) deletes its attachments too: no detach events
    # for an agent that no longer exists (they would also point at the deleted row).
    if not isinstance(origin, Agent | Organization):
        events.tool_attachment_changed(instance, attached=False)


@receiver(m2m_changed, sender=Agent.tools.through)
def tools_added(sender, instance, action, reverse, pk_set, **kwargs):
    """`agent.tools.add(tool)` inserts AgentTool rows in bulk, without post_save. (Removal
    deletes the rows one by one and is reported by `tool_detached`.)"""
    if action != "post_add" or not pk_set:
        return
    rows = AgentTool.objects.select_related("agent", "tool")
    rows = (
        rows.filter(tool_id__in=pk_set, agent=instance)
        if not reverse
        else rows.filter(agent_id__in=pk_set, tool=instance)
    )
    for row in rows:
        events.tool_attachment_changed(row, attached=True)


@receiver(callback_attempted)
def callback_attempted_(sender, delivery, attempt, **kwargs):
    events.record_callback_attempt(delivery, attempt)
