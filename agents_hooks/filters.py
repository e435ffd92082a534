"""Query filters of the agent platform's list endpoints (`?agent=…&status=…&created_after=…`).

Every id is checked against the caller's organization and every status against its choices: a
value that cannot match is a 400 naming the parameter (webhooks_project/filters.py)."""

import django_filters

from webhooks_project.filters import OrganizationObjectFilter, choice_filter, created_after, created_before

from .models import Agent, Job, Message, Run, RunStatus, Step, StepStatus, Tool, ToolExecution, ToolExecutionStatus

AGENT_ORG = "agent__organization"


class AgentFilter(django_filters.FilterSet):
    tool = OrganizationObjectFilter(Tool, field_name="agenttool__tool", help_text="Agents this tool is attached to.")
    created_after = created_after()
    created_before = created_before()

    class Meta:
        model = Agent
        fields = ["tool", "created_after", "created_before"]


class ToolFilter(django_filters.FilterSet):
    agent = OrganizationObjectFilter(Agent, field_name="agenttool__agent", help_text="Tools attached to this agent.")
    created_after = created_after()
    created_before = created_before()

    class Meta:
        model = Tool
        fields = ["agent", "created_after", "created_before"]


class RunFilter(django_filters.FilterSet):
    agent = OrganizationObjectFilter(Agent, help_text="Runs of this agent.")
    status = choice_filter(RunStatus.choices)
    created_after = created_after()
    created_before = created_before()

    class Meta:
        model = Run
        fields = ["agent", "status", "created_after", "created_before"]


class JobFilter(RunFilter):
    agent = OrganizationObjectFilter(Agent, help_text="Jobs of this agent.")

    class Meta:
        model = Job
        fields = ["agent", "status", "created_after", "created_before"]


class StepFilter(django_filters.FilterSet):
    agent = OrganizationObjectFilter(Agent, help_text="Steps of this agent.")
    run = OrganizationObjectFilter(Run, AGENT_ORG, help_text="Steps of this run.")
    status = choice_filter(StepStatus.choices)
    created_after = created_after()
    created_before = created_before()

    class Meta:
        model = Step
        fields = ["agent", "run", "status", "created_after", "created_before"]


class MessageFilter(django_filters.FilterSet):
    agent = OrganizationObjectFilter(Agent, help_text="Messages of this agent.")
    step = OrganizationObjectFilter(Step, AGENT_ORG, help_text="Messages of this step.")
    role = choice_filter(Message._meta.get_field("role").choices, help_text="Only messages with this role.")
    created_after = created_after()
    created_before = created_before()

    class Meta:
        model = Message
        fields = ["agent", "step", "role", "created_after", "created_before"]


class ToolExecutionFilter(django_filters.FilterSet):
    agent = OrganizationObjectFilter(Agent, help_text="Calls made by this agent.")
    tool = OrganizationObjectFilter(Tool, help_text="Calls of this tool.")
    step = OrganizationObjectFilter(Step, AGENT_ORG, help_text="Calls made in this step.")
    status = choice_filter(ToolExecutionStatus.choices)
    created_after = created_after()
    created_before = created_before()

    class Meta:
        model = ToolExecution
        fields = ["agent", "tool", "step", "status", "created_after", "created_before"]
